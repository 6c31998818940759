"""One module per `medclf` subcommand: add_arguments(parser) and run(args), both thin."""


def add_compute_arguments(parser):
    """--threads, --device and --no-progress, as every command that runs a model on images has them."""
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: one per core)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto picks CUDA when present")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def apply_threads(args):
    """Honour --threads before any model is built."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
