# Seed 002's organize step, done safely (PowerShell): moves PROJ_DIR\<class>\* into PROJ_DIR\bin\,
# writes PROJ_DIR\csv\{train,val,test}.csv and creates models\ and results\. Nothing is
# overwritten: any name collision is reported before a single file moves.
# Rerunning after an interruption finishes the move; a PROJ_DIR whose bin/ or csv/ hold files
# from other splits (or files organize did not write) is refused (see docs/partition.md).
#   python partition\partition_datasets.py -proj_dir PROJ_DIR
#   .\organize\organize_files.ps1 PROJ_DIR
# Python: $env:MEDCLF_PYTHON, else the repository's .venv, else python3 / python.
param([Parameter(Mandatory = $true, Position = 0)][string]$ProjDir)
$ErrorActionPreference = "Stop"
$repo = Split-Path -Parent $PSScriptRoot
$candidates = @($env:MEDCLF_PYTHON,
                (Join-Path $repo ".venv/Scripts/python.exe"),
                (Join-Path $repo ".venv/bin/python"))
$py = $null
foreach ($c in $candidates) { if ($c -and (Test-Path -LiteralPath $c)) { $py = $c; break } }
if (-not $py) { $py = if (Get-Command python3 -ErrorAction SilentlyContinue) { "python3" } else { "python" } }
$splits = Join-Path $ProjDir "splits.csv"
if (-not (Test-Path -LiteralPath $splits)) {
    Write-Error "organize_files.ps1: $splits not found; run partition\partition_datasets.py -proj_dir `"$ProjDir`" first"
    exit 1
}
$sep = [System.IO.Path]::PathSeparator
$env:PYTHONPATH = if ($env:PYTHONPATH) { (Join-Path $repo "python") + $sep + $env:PYTHONPATH } else { Join-Path $repo "python" }
& $py -m medclf organize --splits $splits --out $ProjDir --mode move --layout seed002
exit $LASTEXITCODE
