"""Training reprogrammers and mappers against the frozen AST (torch). Datasets, caches, loss,
recipes, metrics and checkpoints live here; see the training issue for what lands next."""
