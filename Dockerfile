# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build -t gitsync:0.1.0 .                            # the sidecar (default, last stage)
#   docker build --target demo -t gitsync-demo:0.1.0 .         # the demo app's runtime, under gitsync-reload
# The sidecar image also carries gitsync-reload as one standalone executable, for
# app images in any language (docs/containers.md).
#
# Both run as the numeric non-root user 65532 and expect a read-only root
# filesystem with a writable /tmp (HOME) mounted in: see k8s/.

# ---------------------------------------------------------------------------
# requirements: pyproject.toml's dependencies as a requirements file. Each
# build stage below makes one virtual environment that a runtime stage copies
# whole (so the images carry no pip cache, wheel or build tool), and installs
# the dependencies before it copies the code: a change to the code reuses
# those layers. Bytecode is compiled at install: the runtime root filesystem
# is read-only.
FROM python:3.11-slim-bookworm AS requirements
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > requirements.txt \
 && grep '^watchfiles' requirements.txt > reload-requirements.txt

# build: the sidecar's environment, gitsync with all its dependencies.
FROM requirements AS build
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY gitsync/ gitsync/
COPY webhook/ webhook/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

# build-demo: what the demo app imports, and gitsync-reload: the gitsync
# package without the sidecar's dependencies (GitPython, Flask for the API,
# requests ...), plus watchfiles, the one gitsync-reload imports. The Python
# package, not the standalone executable: --preload needs it. pip and
# setuptools go last: nothing in the app container installs anything.
FROM requirements AS build-demo
COPY demo-app/requirements.txt demo-app/requirements.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r reload-requirements.txt -r demo-app/requirements.txt
COPY gitsync/ gitsync/
COPY webhook/ webhook/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && rm /opt/venv/bin/gitsync \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

# build-standalone: gitsync-reload as one self-contained executable (PyInstaller
# one-file: Python and the modules it imports inside), for app images in any
# language with no Python of their own (glibc 2.36 or newer, as bookworm has).
# binutils: PyInstaller reads the libraries it bundles with objdump.
FROM requirements AS build-standalone
# No apt version pins (DL3008): see the gitsync stage below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r reload-requirements.txt pyinstaller==6.22.3
COPY gitsync/ gitsync/
COPY webhook/ webhook/
COPY freeze/gitsync-reload.py freeze/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && /opt/venv/bin/pyinstaller --onefile --noconfirm --log-level WARN --name gitsync-reload \
        --distpath /opt/gitsync/bin --workpath /tmp/pyinstaller --specpath /tmp/pyinstaller \
        freeze/gitsync-reload.py \
 && /opt/gitsync/bin/gitsync-reload --help >/dev/null

# ---------------------------------------------------------------------------
# runtime: what both images share. A named user for uid 65532, because ssh
# refuses to run for a uid with no passwd entry ("No user exists for uid").
# HOME is /tmp: git writes its config and ssh its state there, and /tmp is
# the one writable place (an emptyDir in Kubernetes).
FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 65532 gitsync \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin gitsync

# ---------------------------------------------------------------------------
# demo: the app container. The app's code is NOT in the image: it comes from
# the git repository, published by the sidecar into the shared volume at
# /git/app. gitsync-reload starts `python demo-app/app.py` inside the
# published tree and restarts it each time the link flips to a new commit;
# SIGINT, because waitress drains in-flight requests on it (not on SIGTERM);
# --listen keeps port 8000 open across restarts, and --preload runs each start
# in an interpreter that has imported Flask and waitress ahead of the flip.
# The image holds the demo's own dependencies and gitsync-reload, none of the
# sidecar's (build-demo above).
# git is here only for the demo page, which shows the commit's subject and
# author (`git log`).
FROM runtime AS demo
# No apt version pins (DL3008): see the gitsync stage below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-demo /opt/venv /opt/venv
WORKDIR /tmp
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["gitsync-reload"]
CMD ["--link", "/git/app", "--signal", "INT", "--listen", "0.0.0.0:8000", "--preload", "flask,waitress", "--", "python", "demo-app/app.py"]

# ---------------------------------------------------------------------------
# gitsync: the sidecar (default target). git and ssh come from Debian.
# The apt packages are not version-pinned on purpose (hadolint DL3008):
# Debian's security updates replace the pinned version in the archive, and a
# pinned build then fails; the base tag pins the release (bookworm) instead.
FROM runtime AS gitsync
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git openssh-client \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
# For app containers: an init container copies it into an emptyDir the app
# mounts (k8s/overlays/any-language, docs/containers.md).
COPY --from=build-standalone /opt/gitsync/bin/gitsync-reload /opt/gitsync/bin/gitsync-reload
WORKDIR /tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["gitsync"]
