"""Staged rollouts: a baseline per model, rollouts with their history, devices and metric sums.

Publishing stops offering a version by itself: from now on a version reaches devices through a
rollout, and outside rollouts devices are offered their model's baseline. So that an upgraded
deployment keeps offering exactly what it offered before, every existing model's baseline is set
to its latest non-revoked version.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("state IN ('running', 'waiting', 'paused')")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("baseline_version", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE models SET baseline_version = (SELECT MAX(v.version) FROM model_versions v "
        "WHERE v.model_id = models.id AND v.revoked_at IS NULL)"
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("stage_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_rollouts_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(
        "uq_rollouts_active_model",
        "rollouts",
        ["model_id"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.create_index(op.f("ix_rollouts_state_id"), "rollouts", ["state", "id"], unique=False)
    op.create_table(
        "rollout_history",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(length=1000), nullable=True),
        sa.Column("by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_history_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_history")),
    )
    op.create_index(op.f("ix_rollout_history_rollout_id_id"), "rollout_history", ["rollout_id", "id"], unique=False)
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_rollout_devices_device_pk_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_devices_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_pk", name=op.f("pk_rollout_devices")),
    )
    op.create_table(
        "rollout_metrics",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("p50_sum", sa.Float(), nullable=False),
        sa.Column("p95_sum", sa.Float(), nullable=False),
        sa.Column("confidence_sum", sa.Float(), nullable=False),
        sa.Column("validation_failures", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_metrics_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("rollout_id", "version", name=op.f("pk_rollout_metrics")),
    )


def downgrade() -> None:
    op.drop_table("rollout_metrics")
    op.drop_table("rollout_devices")
    op.drop_index(op.f("ix_rollout_history_rollout_id_id"), table_name="rollout_history")
    op.drop_table("rollout_history")
    op.drop_index(op.f("ix_rollouts_state_id"), table_name="rollouts")
    op.drop_index("uq_rollouts_active_model", table_name="rollouts")
    op.drop_table("rollouts")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("baseline_version")
