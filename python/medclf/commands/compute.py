"""The compute options every command that runs a model shares, in one block:

  --device auto|cpu|cuda   auto (the default): CUDA when present, else the CPU
  --threads N              torch intra-op threads (default: one per core)
  --amp / --no-amp         mixed precision (commands whose forward passes honour it; crop's Grad-CAM
                           maps are computed in fp32, as explain's, so crop has none)
  --no-progress, --quiet   no progress bars (--quiet is the same option)
"""


def add_amp_arguments(parser, default_text):
    """--amp / --no-amp (dest amp: True, False, or None = the default)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--amp", dest="amp", action="store_true", default=None,
                       help="mixed precision: bf16 autocast + channels_last on CPUs with native bf16 "
                            "(AVX-512 BF16, AMX) and CUDA GPUs with bf16, fp16 + gradient scaler on other "
                            f"GPUs, fp32 where none is supported (said on stderr); default: {default_text}")
    group.add_argument("--no-amp", dest="amp", action="store_false", help="full fp32 precision")


def add_compute_arguments(parser, amp_default=None, device=True):
    """The block above as an argument group; `amp_default` (the text of --amp's default) adds
    --amp/--no-amp for a command that honours it; device=False leaves --device out (export runs
    on the CPU, where the ONNX file is checked)."""
    group = parser.add_argument_group("compute")
    if device:
        group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                           help="auto: CUDA when present, else the CPU; cuda asked for but absent: a warning, the CPU")
    group.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads (default: one per core); 1 helps on a busy shared machine")
    if amp_default is not None:
        add_amp_arguments(group, amp_default)
    group.add_argument("--no-progress", "--quiet", dest="progress", action="store_false",
                       help="no progress bars (--quiet is the same option)")
    return group


def apply_threads(args):
    """Honour --threads before any model is built."""
    if getattr(args, "threads", None):
        import torch

        if args.threads < 1:
            from medclf.core.errors import MedclfError

            raise MedclfError(f"--threads {args.threads}: give a whole number of at least 1")
        torch.set_num_threads(args.threads)


