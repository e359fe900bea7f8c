"""Which keys a service hands the data plane for a cluster (encryption at rest).

Services never encrypt anything themselves: they open a region's object store and pass it
through :meth:`ClusterEncryption.seal` with the cluster, and the data plane seals and opens
every object under the chain's data key (:mod:`managed_backups.shared.dataplane.sealing`).
This module decides, per cluster, the key-encryption keys (:mod:`~managed_backups.shared.dataplane.keys`):

- the **platform keyring** (``Settings.platform_keys_path``) for every cluster;
- the cluster's **customer keyring** (``Settings.customer_keys_path / <cluster id>``), whose
  configured key (``ClusterEncryptionKey``, set through the API) wraps new chains' data keys
  while the cluster is ADVANCED (:func:`~managed_backups.shared.domain.encryption_key.customer_key_applies`).

Every key of both keyrings may unwrap the cluster's older data keys (chains wrapped before a
rotation or before a customer key was configured); a key file removed is a revoked key.
"""

from __future__ import annotations

from collections.abc import Collection

from managed_backups.shared.dataplane.keys import ClusterKeys, KeyProvider, LocalKeyring
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.sealing import sealed_store
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.encryption_key import ClusterEncryptionKey, customer_key_applies
from managed_backups.shared.domain.ids import encryption_key_aggregate_id
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.settings import Settings


def platform_keyring(settings: Settings) -> LocalKeyring:
    """The platform keyring: its first key is created at first use only in the default
    directory; a configured directory must hold one (fail closed)."""
    return LocalKeyring(
        settings.platform_keys_path,
        label="platform",
        name="platform key",
        create_first=settings.platform_keys_dir is None,
    )


def customer_keyring(settings: Settings, cluster_id: str, current: str | None) -> LocalKeyring:
    return LocalKeyring(
        settings.customer_keys_path / cluster_id,
        label="customer",
        name=f"customer key of cluster {cluster_id}",
        current=current,
    )


class ClusterEncryption:
    """The keys of each cluster, read from the event store at every call (a changed or removed
    customer key applies at once)."""

    def __init__(self, settings: Settings, store: EventStore) -> None:
        self.settings = settings
        self.store = store
        self.platform = platform_keyring(settings)

    def configured_key(self, cluster_id: str) -> ClusterEncryptionKey | None:
        return self.store.get_or_none(encryption_key_aggregate_id(cluster_id), ClusterEncryptionKey)

    def keys_for(self, cluster: Cluster) -> ClusterKeys:
        configured = self.configured_key(cluster.cluster_id)
        name = configured.key_name if configured is not None else None
        customer = customer_keyring(
            self.settings,
            cluster.cluster_id,
            name if customer_key_applies(cluster.tier, name) else None,
        )
        providers: tuple[KeyProvider, ...] = (customer, self.platform)
        wrapping: KeyProvider = customer if customer.current is not None else self.platform
        return ClusterKeys(cluster.cluster_id, wrapping, providers)

    def seal(
        self, objects: ObjectStore, cluster: Cluster, encrypted_chains: Collection[str] = ()
    ) -> ObjectStore:
        """``objects`` (a region's store) sealed for ``cluster``: what the data plane is given.
        ``encrypted_chains``: the chains its backups record as encrypted (see
        :func:`encrypted_chains`)."""
        return sealed_store(objects, self.keys_for(cluster), encrypted_chains)


def encrypted_chains(*backups: Backup | None) -> set[str]:
    """The chains of ``backups`` recorded as stored encrypted (``BackupCompleted.encrypted``):
    a reader refuses them without their key objects instead of reading them as unencrypted."""
    return {str(b.chain_id) for b in backups if b is not None and b.encrypted}
