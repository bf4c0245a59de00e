"""The `inception-parity` console command and its subcommands."""

import sys

USAGE = """usage: inception-parity COMMAND [flags]

Commands:
  run              extract features with both InceptionV3 models and write them to Parquet
  report           write the statistics, worst images and plots of a finished run
  explain          rank Keras configurations by how well they match the hub model on sample
                   images, and find the hub graph's final pooling
  compare-weights  compare the hub model's variables with the Keras weights, tensor by tensor

Run `inception-parity COMMAND --help` for a command's flags."""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from pipeline import run

        return run.main(rest)
    if command == "report":
        from pipeline import report

        return report.main(rest)
    if command == "explain":
        from pipeline import explain

        return explain.main(rest)
    if command == "compare-weights":
        from pipeline import compare_weights

        return compare_weights.main(rest)
    print(f"inception-parity: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
