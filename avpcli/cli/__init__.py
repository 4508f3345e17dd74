"""The `avp` command line: parse, call the library, report. The only package that prints, reads the
environment, shows progress or exits.

stdout carries data only (paths, JSON) so that avp works in pipelines; progress, warnings and
errors go to stderr. Exit codes: 0 all done, 1 some files failed or a domain error, 2 usage error.

output    stdout lines, stderr messages, progress bars, domain errors → one line and an exit code
options   option values the commands share (--shard, own models, stdin paths, device, key files)
basics    keygen, targets, demo
crypt     encrypt, decrypt
evaluate  the `avp evaluate` sub-app: one avpcli.report call per analysis
app       the Typer app, --version and main (the console script `avp`)
"""

from avpcli.cli.app import app, main
from avpcli.cli.basics import demo_table
from avpcli.cli.evaluate import evaluate_app
from avpcli.cli.options import default_key_folder, resolve_device
from avpcli.cli.output import EventPrinter, StagePrinter, domain_errors, printable, stderr

__all__ = ["EventPrinter", "StagePrinter", "app", "default_key_folder", "demo_table", "domain_errors", "evaluate_app",
           "main", "printable", "resolve_device", "stderr"]
