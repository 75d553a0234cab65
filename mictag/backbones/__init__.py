"""The frozen, pretrained networks and their loaders: the AudioSet AST (``ast``, ``ast_sources``,
``ast_checkpoints``, ``attention``) and musicnn (``musicnn``, ``musicnn_weights``, ``tf_bundle``),
behind one interface (``frozen``). What is trained around them is in :mod:`mictag.model`."""
