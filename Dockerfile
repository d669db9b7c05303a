# Server and device-agent image (no torch: the builder runs where models are trained).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY artifact artifact
COPY server server
COPY device_agent device_agent
COPY migrations migrations
COPY alembic.ini ./
COPY model_builder/__init__.py model_builder/__init__.py
RUN pip install --no-cache-dir '.[server,agent]'
RUN useradd --create-home ota && mkdir -p /data && chown ota /data
USER ota
EXPOSE 8000
CMD ["ota-server", "serve", "--host", "0.0.0.0", "--port", "8000"]
