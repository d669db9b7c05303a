"""Initial schema: registry, devices, labels, events, tokens, deltas.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 12:35:39.432765
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_admin_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_tokens_token_hash")),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("installed_version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=500), nullable=True),
        sa.Column("status_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_metrics", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("device_id", name=op.f("uq_devices_device_id")),
        sa.UniqueConstraint("token_id", name=op.f("uq_devices_token_id")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_devices_model_name_installed_version_id"),
        "devices",
        ["model_name", "installed_version", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_devices_status_id"), "devices", ["status", "id"], unique=False)
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "revoked_tokens",
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_revoked_tokens")),
    )
    op.create_table(
        "deltas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=False),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("length", sa.BigInteger(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_deltas_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deltas")),
        sa.UniqueConstraint(
            "model_id", "from_version", "to_version", name=op.f("uq_deltas_model_id_from_version_to_version")
        ),
    )
    op.create_table(
        "device_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("device_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_device_events_device_pk_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_events")),
    )
    op.create_index(op.f("ix_device_events_device_pk_id"), "device_events", ["device_pk", "id"], unique=False)
    op.create_table(
        "device_labels",
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=63), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_device_labels_device_pk_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_pk", "key", name=op.f("pk_device_labels")),
    )
    op.create_index(
        op.f("ix_device_labels_key_value_device_pk"), "device_labels", ["key", "value", "device_pk"], unique=False
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("manifest_bytes", sa.LargeBinary(), nullable=False),
        sa.Column("signatures", sa.Text(), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("payload_length", sa.BigInteger(), nullable=False),
        sa.Column("payload_encoding", sa.String(length=32), nullable=False),
        sa.Column("onnx_sha256", sa.String(length=64), nullable=False),
        sa.Column("onnx_length", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=64), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_versions_model_id_models"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_versions_model_id_version")),
    )


def downgrade() -> None:
    op.drop_table("model_versions")
    op.drop_index(op.f("ix_device_labels_key_value_device_pk"), table_name="device_labels")
    op.drop_table("device_labels")
    op.drop_index(op.f("ix_device_events_device_pk_id"), table_name="device_events")
    op.drop_table("device_events")
    op.drop_table("deltas")
    op.drop_table("revoked_tokens")
    op.drop_table("models")
    op.drop_index(op.f("ix_devices_status_id"), table_name="devices")
    op.drop_index(op.f("ix_devices_model_name_installed_version_id"), table_name="devices")
    op.drop_table("devices")
    op.drop_table("admin_tokens")
