# Server and device-agent image. No torch: the builder runs where models are trained.
#
# Stage 1 installs `.[server,agent]` into a virtual environment; a constraint that no torch version
# satisfies makes the install fail, instead of growing the image by gigabytes, if a dependency ever
# pulls torch in. Stage 2 copies only that environment onto a fresh slim base (no pip cache, no
# build files). tests/server/test_deployment.py checks the extras and this constraint.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ota
ENV PATH=/opt/ota/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY artifact artifact
COPY server server
COPY device_agent device_agent
COPY migrations migrations
COPY model_builder/__init__.py model_builder/__init__.py
RUN echo 'torch<0' > /tmp/no-torch.txt \
 && pip install --constraint /tmp/no-torch.txt '.[server,agent]' \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM python:3.11-slim
COPY --from=build /opt/ota /opt/ota
ENV PATH=/opt/ota/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --create-home ota && mkdir -p /data && chown ota /data
USER ota
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s CMD ["ota-server", "healthcheck"]
CMD ["ota-server", "serve", "--host", "0.0.0.0", "--port", "8000"]
