"""Entry points: each stage is a Hydra app that composes config, builds objects and calls one function."""
