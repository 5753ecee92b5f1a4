from setuptools import find_packages, setup

setup(
    name="remop-usb",
    version="0.1.0",
    description="Class-imbalanced semi-supervised facial expression recognition (ReMoP and baselines) for USB",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["remop_usb", "remop_usb.*", "datasets_fer", "datasets_fer.*"]),
    python_requires=">=3.9",
    # A set verified to install and import together (semilearn 0.3.2 pins nothing; left alone pip mixes torch and
    # torchaudio builds and `import semilearn` fails; ruamel.yaml>=0.18 breaks USB's YAML loader).
    install_requires=[
        "torch==2.11.0",
        "torchvision==0.26.0",
        "torchaudio==2.11.0",
        "semilearn==0.3.2",
        "ruamel.yaml<0.18",
        "facenet-pytorch==2.5.3",
        "numpy",
        "pillow",
        "scikit-learn",
        "scikit-image",
        "matplotlib",
        "wandb",
        "tqdm",
        "filelock",  # the stand-in backbone is built once when several processes ask for it
        "submitit>=1.5.4,<1.6",  # sweep --launcher slurm (its sbatch file is also printed by --dry_run)
    ],
    extras_require={
        "test": ["pytest>=7.3", "pytest-xdist>=3.5", "import-linter>=2.17,<3",  # lint-imports: tests/test_layering.py
                 "mkdocs-material>=9.5,<10"],  # tests/test_docs.py builds the docs with mkdocs build --strict
        "docs": ["mkdocs-material>=9.5,<10"],  # mkdocs serve / mkdocs build (mkdocs.yml, docs/)
    },
    # A separate package extends remop-usb without editing it by declaring the group "remop_usb.plugins" in ITS
    # setup.py; the launcher imports each listed module (or calls each module:function) before building anything:
    #     entry_points={"remop_usb.plugins": ["my_alg = my_pkg.my_alg"]},
    entry_points={"console_scripts": ["remop-usb=remop_usb.cli:main"]},
)
