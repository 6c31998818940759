"""One module per `medclf` subcommand: add_arguments(parser) and run(args), both thin. The table
of commands is registry.py; the compute options they share are compute.py."""
