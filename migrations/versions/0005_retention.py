"""Storage lifecycle and event retention: collected versions and deltas, metric summaries, the GC lease.

- ``model_versions.unneeded_since`` / ``collected_at``: the storage GC's mark (first seen collectable)
  and sweep (blobs deleted; the row stays as registry history).
- ``deltas.collected_at``: a delta whose base or target was collected (its status becomes ``collected``).
- ``devices.previous_version``: the version a device ran before its installed one (its other slot).
- ``device_metric_summaries``: per device and version, the sums of the metrics events retention deleted.
- ``maintenance_leases``: one ``ota-server gc`` at a time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("unneeded_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deltas") as batch:
        batch.add_column(sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("previous_version", sa.Integer(), nullable=True))
    op.create_table(
        "device_metric_summaries",
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("windows", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("p50_sum", sa.Float(), nullable=False),
        sa.Column("p95_sum", sa.Float(), nullable=False),
        sa.Column("confidence_sum", sa.Float(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_device_metric_summaries_device_pk_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_pk", "version", name=op.f("pk_device_metric_summaries")),
    )
    op.create_table(
        "maintenance_leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maintenance_leases")),
    )


def downgrade() -> None:
    op.drop_table("maintenance_leases")
    op.drop_table("device_metric_summaries")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("previous_version")
    with op.batch_alter_table("deltas") as batch:
        batch.drop_column("collected_at")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("collected_at")
        batch.drop_column("unneeded_since")
