"""DataLab's client library, for notebook containers, jobs and the host's
`datalab` command alike: `http` (one HTTP client, with retries), `jobs` (the
jobs service's client and its job statuses), `cli` (the `datalab jobs` verbs)."""
