"""medclf organize: lay images out in folders from splits.csv (never overwrites or loses a file)."""

from pathlib import Path

HELP = "lay images out as OUT/<split>/<class>/ (imagefolder) or seed 002's bin/ csv/ models/ results/"
DESCRIPTION = (
    "Place the images listed in splits.csv under --out. imagefolder: OUT/<split>/<class>/<file>, "
    "readable by torchvision ImageFolder, fastai and Keras (sub-folders below the class folder are kept). seed002: OUT/bin/<file> plus headerless "
    "OUT/csv/{train,val,test}.csv (filename,class_idx) and empty models/ and results/. All name "
    "collisions are reported before anything is touched, and nothing is overwritten. link/copy write "
    "OUT/splits.csv pointing at the new files; move rewrites the input splits.csv instead. "
    "OUT/.medclf-organize.json lists every file written; a folder organized from other splits, or "
    "holding files organize did not write, is refused (see --replace)."
)


def add_arguments(parser):
    parser.add_argument("--splits", type=Path, required=True,
                        help="splits.csv (or the folder holding it) written by `medclf partition`")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--mode", choices=("link", "copy", "move"), default="link",
                        help="link = hard link (falls back to symlink, then copy); move also rewrites splits.csv")
    parser.add_argument("--layout", choices=("imagefolder", "seed002"), default="imagefolder", help="folder layout")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the paths in splits.csv are relative to (default: partition.json's data_root)")
    parser.add_argument("--replace", action="store_true",
                        help="OUT was organized from other splits: first delete the files that organize wrote "
                             "there (listed in OUT/.medclf-organize.json), never any other file; refused when "
                             "those images were moved there (--mode move), as they are the only copies")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args):
    from medclf.prepare.organize import organize

    organize(args.splits, args.out, mode=args.mode, layout=args.layout, data_root=args.data_root, quiet=args.quiet,
             replace=args.replace)
    return 0
