"""One module per ``rcnn`` subcommand (``add_arguments(parser)`` and ``run(args, config)``)."""
