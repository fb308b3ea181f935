# syntax=docker/dockerfile:1
#
# markd: an open, drop-in mongocryptd, as a small non-root container.
#
#   docker build -t markd .
#   docker run --rm -p 127.0.0.1:27020:27020 markd
#
# The image listens on every interface *of the container's own network namespace*
# (--bind_ip_all); what is reachable from outside is decided by how you run it:
# publish the port on 127.0.0.1 only (as above), or share the namespace with the app as a
# sidecar (examples/sidecar/). markd logs a warning about the non-loopback bind at startup.

ARG PYTHON_VERSION=3.12

# ---- build: the project as a wheel, plus wheels of its dependencies ----------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY markd ./markd
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: a venv with only markd and its dependencies, no compilers, no pip ----------
# The distribution is markd-cryptd (PyPI's "markd" is another project); it installs the markd package.
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/markd/bin:$PATH
# Install offline from the build stage's wheels (bind-mounted: they never land in a layer).
# The venv gets no pip of its own; the base image's pip installs into it with --python.
# DL3013 (pin versions): the only index is /wheels, built from this very source tree.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/markd \
 && pip --python /opt/markd/bin/python install --no-index --find-links=/wheels markd-cryptd \
 && groupadd --system --gid 10001 markd \
 && useradd --system --uid 10001 --gid markd --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin markd \
 && install -d -o markd -g markd -m 0755 /run/markd

USER 10001:10001
WORKDIR /run/markd
EXPOSE 27020

# A real `hello` OP_MSG over the wire: healthy only if ok:1 and iscryptd:true.
# With --tlsMode requireTLS add --tls --tlsCAFile CA here, and --tlsCertificateKeyFile PEM if markd has --tlsCAFile.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python", "-m", "markd.healthcheck", "--host", "127.0.0.1", "--port", "27020", "--timeout", "4", "--quiet"]

# Exec form: markd is PID 1 and receives SIGTERM itself; it stops accepting, lets written
# replies drain and exits 0 (docker stop's default 10 s grace period is plenty).
STOPSIGNAL SIGTERM
ENTRYPOINT ["markd"]
CMD ["--bind_ip_all", "--port", "27020", "--nounixsocket", \
     "--pidfilepath", "/run/markd/mongocryptd.pid", "--logFormat", "json"]
