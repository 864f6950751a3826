"""The `clap-lightning` verbs: one module per verb, each with `add_arguments(parser)` and `run(args)`.

`clap_lightning.cli` imports every module here to build its parser, so a module's top level
imports only the standard library and `clap_lightning.errors`/`config`: torch, Lightning,
transformers and matplotlib (several seconds together) are imported inside the functions
that run the verb, so `clap-lightning --help` and a mistyped option answer at once.
"""
