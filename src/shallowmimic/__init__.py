"""shallowmimic: do deep nets really need to be deep? (Ba & Caruana, 2014) as a tracked pipeline."""

from pathlib import Path

from omegaconf import OmegaConf

from shallowmimic.quiet import silence

__version__ = "0.1.0"


def project_root() -> Path:
    """The folder holding pyproject.toml (editable install): outputs/ and conf/ live there, whatever the working
    directory; else the working directory."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def conf_dir() -> Path:
    """The Hydra configs: conf/ of the checkout, or the copy an installed package ships as shallowmimic/conf."""
    checkout = project_root() / "conf"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / "conf"


# conf/train.yaml's paths.root: configs composed by train, bench and the tests all resolve it
OmegaConf.register_new_resolver("sm.root", lambda: str(project_root()), replace=True)

silence()  # every entry point (train, report, registry, study, DDP ranks) imports the package first
