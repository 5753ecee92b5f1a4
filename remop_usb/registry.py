"""Making USB aware of everything this plugin adds.

USB registers algorithms by importing modules that run ``@ALGORITHMS.register`` / ``@IMB_ALGORITHMS.register``
decorators, and finds networks by name as attributes of ``semilearn.nets``. :func:`load` does both for this package
(and for any extra modules listed under ``plugins``), after installing the compatibility patches.
"""

from __future__ import annotations

import importlib
import warnings

#: package whose modules define algorithms (importing each registers it); shared mechanics live there too
ALGORITHM_PACKAGE = "remop_usb.algorithms"

#: USB net name -> "module:builder"
NETS = {"resnet18_fer": "remop_usb.nets.resnet_fer:resnet18_fer"}

#: setuptools entry-point group of installed third-party plugins: ``name = module`` (importing it registers its
#: algorithms / nets) or ``name = module:function`` (imported, then called with no argument)
ENTRY_POINT_GROUP = "remop_usb.plugins"

_loaded_plugins: set = set()

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # timm's deprecation notice when USB imports it
    warnings.filterwarnings("ignore", message=".*declarative_base.*")  # aim's, under SQLAlchemy 2
    import semilearn  # noqa: F401,E402  (imported here first: runs USB's own registrations)


def load(plugins=()):
    """Install the compat patches and register this package's (and ``plugins``') algorithms and nets."""
    from . import usb_compat

    usb_compat.install()
    import semilearn.nets

    for name, target in NETS.items():
        module_name, attr = target.split(":")
        setattr(semilearn.nets, name, getattr(importlib.import_module(module_name), attr))
    for module_name in algorithm_modules():
        importlib.import_module(module_name)
    load_entry_points()
    for module_name in plugins:
        if module_name not in _loaded_plugins:
            _import_plugin(module_name)
            _loaded_plugins.add(module_name)


def algorithm_modules():
    """Every module of :data:`ALGORITHM_PACKAGE`, sorted (one module per algorithm, plus shared mechanics)."""
    import pkgutil

    package = importlib.import_module(ALGORITHM_PACKAGE)
    return [f"{ALGORITHM_PACKAGE}.{m.name}" for m in sorted(pkgutil.iter_modules(package.__path__),
                                                              key=lambda m: m.name)]


def load_entry_points():
    """Load, once each, every entry point of :data:`ENTRY_POINT_GROUP` that the installed distributions declare."""
    from importlib.metadata import entry_points

    from .errors import UserError

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ENTRY_POINT_GROUP}:{ep.name}={ep.value}"
        if key in _loaded_plugins:
            continue
        try:
            target = ep.load()
        except (ImportError, AttributeError) as err:
            dist = getattr(getattr(ep, "dist", None), "name", "an installed package")
            raise UserError(f"plugin entry point '{ep.name} = {ep.value}' of {dist} (group {ENTRY_POINT_GROUP}) "
                            f"cannot be loaded: {err}") from None
        if ep.attr and callable(target):
            target()
        _loaded_plugins.add(key)


def _import_plugin(module_name):
    from .errors import UserError

    try:
        importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"plugins: cannot import '{module_name}': {err}") from None


def algorithms():
    from semilearn.core.utils import ALGORITHMS

    return sorted(ALGORITHMS.keys())


def imb_algorithms():
    from semilearn.core.utils import IMB_ALGORITHMS

    return sorted(IMB_ALGORITHMS.keys())


def algorithm_class(name):
    from semilearn.core.utils import ALGORITHMS

    return ALGORITHMS[name]


def imb_algorithm_class(name):
    from semilearn.core.utils import IMB_ALGORITHMS

    return IMB_ALGORITHMS[name]


def nets():
    import semilearn.nets

    return sorted(n for n in dir(semilearn.nets) if not n.startswith("_") and callable(getattr(semilearn.nets, n))
                  and n[0].islower())


USB_DATASETS = ("cifar10", "cifar100", "svhn", "stl10", "eurosat", "tissuemnist", "semi_aves", "semi_aves_out",
                "imagenet", "imagenet127", "esc50", "fsdnoisy", "gtzan", "superbks", "superbsi", "urbansound8k",
                "aclImdb", "ag_news", "amazon_review", "dbpedia", "yahoo_answers", "yelp_review")


def datasets():
    from datasets_fer import FER_DATASETS

    return sorted(FER_DATASETS) + list(USB_DATASETS)
