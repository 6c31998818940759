"""medclf sweep: an Optuna hyper-parameter sweep over one run of a study file (logic in medclf.workflows.sweep)."""

HELP = "Optuna sweep of a study's training options (objective: the best validation value, never test)"
DESCRIPTION = (
    "Train N trials of one run of a study file on the study's partition, each with values drawn from the search "
    "space (TPE sampler), and keep the trial with the best validation value of the monitored metric (train's "
    "--monitor). Trials report that value each epoch to a median pruner whose warm-up is at least the patience. "
    "Writes OUT/<study>/<sweep-name>/: trials/ (one run folder per trial), trials.csv, sweep.json, best_study.yaml "
    "(the study with the best values: `medclf study` it to test once) and history.png, importance.png, lr_batch.png. "
    "Rerunning the same command resumes (an interrupted trial continues from its last.pt); more workers join with "
    "a shared --storage. Options also come from the study file's sweep: section; the command line wins. "
    "See docs/sweep.md."
)


def add_arguments(parser):
    parser.add_argument("study", help="study file, e.g. studies/brain_mri.yaml")
    parser.add_argument("--trials", type=int, help="number of trials in all, over every worker (default: sweep.trials)")
    parser.add_argument("--space", help="search space, e.g. 'lr=loguniform(1e-4,1e-2) batch-size=choice(16,32,64) "
                                        "arch=choice(resnet18,densenet121)'; keys are `medclf train` options; "
                                        "kinds loguniform, uniform, int, logint (LOW,HIGH) and choice (values) "
                                        "(default: sweep.space)")
    parser.add_argument("--storage", help="Optuna storage: a journal file path (several processes on one machine) or "
                                          "postgresql://USER@HOST:PORT/DB (several machines) (default: SQLite "
                                          "sweep.db in the sweep folder, one process)")
    parser.add_argument("--sweep-name", default="sweep", help="sweep folder under OUT/<study>/ and the stored name")
    parser.add_argument("--seed", type=int, help="sampler seed (default: sweep.seed, else 0)")
    parser.add_argument("--no-prune", dest="prune", action="store_false", default=None,
                        help="train every trial to its end (default: median pruning)")
    parser.add_argument("--data-root", metavar="DIR", help="data folder replacing the study file's data.root")
    parser.add_argument("--out", metavar="DIR", default="results", help="output root; the study's folder is OUT/<name>/")
    parser.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="change one study option, e.g. --set train.epochs=10 (repeatable)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args):
    from medclf.commands.registry import stage_commands
    from medclf.workflows.sweep import run_sweep

    for path in run_sweep(args.study, args.trials, args.space, args.storage, args.data_root, args.out, args.overrides,
                          args.sweep_name, args.seed, args.prune, args.progress, commands=stage_commands()):
        print(path)
    return 0
