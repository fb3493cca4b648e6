"""PromptLab's Dagster definitions (assets, checks, jobs, schedules, sensors, the CLI).

The definitions use a few Dagster features marked beta or preview (pools on assets, partitioned asset checks);
their warnings say nothing a user can act on, so they are silenced here, where every entry point (the CLI,
`dagster dev`, the workers) first imports this package (by message: importing Dagster here would slow every
command that does not need it)."""

import warnings

warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")
