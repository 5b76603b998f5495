"""shallowmimic: do deep nets really need to be deep? (Ba & Caruana, 2014) as a tracked pipeline."""

__version__ = "0.1.0"
