"""Entry points and the composition root: ``bootstrap`` is the one module that knows both the
platform (``hotline``) and the features (``services``); the command line, the assembled web
app, the police feed and the demo start from it."""
