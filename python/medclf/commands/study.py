"""`medclf study STUDY.yaml`: run partition, train, test, report and compare from one file."""

HELP = "run a whole study (partition, train, test, report, compare) from one YAML file"
DESCRIPTION = (
    "Run every stage of a study file (studies/*.yaml) and write everything under OUT/NAME/: "
    "partition/, one folder per run, compare/, study.yaml (the file as given), "
    "study_resolved.json (every stage's argv, expanded paths, versions, git commit) and summary.md. "
    "Stages whose outputs exist are skipped, so rerunning the same command resumes an interrupted "
    "study; everything is checked before the first stage, and a refused invocation changes no file. Relative paths in the study file are relative to the current directory. "
    "See docs/studies.md."
)


def add_arguments(parser):
    parser.add_argument("study", help="study file, e.g. studies/brain_mri.yaml")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="data folder replacing the study file's data.root; None = the study file's value "
                             "(which may name an environment variable)")
    parser.add_argument("--out", metavar="DIR", default="results",
                        help="output root; the study writes to OUT/<name>/")
    parser.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="change one option, e.g. --set train.epochs=3, --set runs.*.img-size=64, "
                             "--set runs.densenet121.batch-size=16, --set partition.seed=1 (repeatable)")
    parser.add_argument("--stages", metavar="LIST", default=None,
                        help="comma-separated subset of partition,train,test,report,compare; None = all")
    parser.add_argument("--force", action="store_true",
                        help="rerun the selected stages even when their outputs exist")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every value (options, architecture and weights names, class names) and print "
                             "every stage's command line, marked when it would be skipped; run and write nothing")


def run(args):
    from medclf.commands.registry import stage_commands
    from medclf.workflows.study import run_study

    run_study(args.study, data_root=args.data_root, out_root=args.out, stages=args.stages,
              overrides=args.overrides, force=args.force, dry_run=args.dry_run, **stage_commands())
    return 0
