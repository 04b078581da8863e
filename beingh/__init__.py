"""beingh: Being-H0.5-style vision-language-action policies (train, serve, evaluate)."""

__version__ = "0.1.0"
