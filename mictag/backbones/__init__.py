"""Frozen backbones other than the AST (musicnn) and what reading their weights needs."""
