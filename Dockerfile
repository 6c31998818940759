# medclf serve in a container: CPU only, Python plus Debian's R packages (the R report engine),
# a non-root user, and `medclf serve` on a run folder mounted at /model as the default command.
#
#   docker build -t medclf-serve .                     (or: podman build -t medclf-serve .)
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/results/NAME:/model:ro" medclf-serve
#
# Inside the container the server listens on 0.0.0.0 (the container's own interface, so that the
# port can be published); `-p 127.0.0.1:8000:8000` keeps it reachable from this host only.
# The run folder needs best.pt, config.json and quality.json (`medclf quality --run`); a binary
# report (results_*.json) adds the operating point. See docs/serve.md.
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH MPLCONFIGDIR=/tmp/matplotlib
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
        r-base-core r-cran-proc r-cran-jsonlite r-cran-optparse \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/medclf
COPY requirements.txt pyproject.toml README.md ./
# rpy2 (needs R's headers to build) and the test tools stay out: the report runs R through Rscript.
RUN python3 -m venv /opt/venv \
 && grep -v -E '^(rpy2|pytest|httpx|playwright)==' requirements.txt > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY python ./python
RUN pip install --no-deps . && useradd --create-home --uid 10001 medclf

USER medclf
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/model', timeout=4)"
CMD ["medclf", "serve", "--run", "/model", "--host", "0.0.0.0", "--port", "8000"]
