"""``runlens ui``: a local, read-only web app over a store: the job list, the job page (the report, live while
the job trains), the comparison of runs, and the JSON API behind them.

    params   query parameters, checked (a bad one is a 400)
    cache    the small single-flight LRU that keeps analyses, figures and series between requests
    views    what the pages and the API show of the store: job pages of the list, a job, its state
    analyses the analysis of a job (stored, or made now and not stored), its report context, comparisons
    series   a job's steps and samples, whole or since a poll, downsampled with their peaks kept
    tuned    "Apply recommended settings": the tuned config a job's recommendations make
    api      the JSON endpoints;  pages  the HTML pages;  guard  token, host check and security headers
    app      the Starlette application;  server  binding and serving with uvicorn

It never writes: the store is opened read-only (``open_store(read_only=True)``) and no handler calls a writer.
"""
