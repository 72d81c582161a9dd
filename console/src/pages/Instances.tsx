import { useState } from "react";
import { useCanEdit } from "../auth";
import {
  DeleteButton,
  FilterSelect,
  PageHeader,
  PagedTable,
  StateBadge,
  formatTime,
  usePagedList,
  type Column,
} from "../components";
import type { Scheduler, SchedulerHost, SeedPeer } from "../types";

const STATES: [string, string][] = [
  ["active", "active"],
  ["inactive", "inactive"],
];

type Instance = Scheduler | SeedPeer;

/** Schedulers and seed peers: the processes that registered with the manager, filtered by state. */
function InstanceList<T extends Instance>({
  title,
  path,
  noun,
  columns,
}: {
  title: string;
  path: string;
  noun: string;
  columns: Column<T>[];
}) {
  const [state, setState] = useState("");
  const canEdit = useCanEdit();
  const list = usePagedList<T>(path, { state });
  const name = (s: Instance) => s.host_name ?? s.hostname;
  return (
    <>
      <PageHeader title={title}>
        <FilterSelect
          label="State"
          value={state}
          options={STATES}
          onChange={(value) => {
            setState(value);
            list.setPage(1);
          }}
        />
      </PageHeader>
      <PagedTable<T>
        list={list}
        caption={title}
        empty={`No ${noun}s have registered.`}
        columns={[
          { header: "Host name", cell: name },
          { header: "Address", cell: (s) => `${s.ip}:${s.port}` },
          ...columns,
          { header: "State", cell: (s) => <StateBadge state={s.state} /> },
          { header: "IDC", cell: (s) => s.idc || "–" },
          { header: "Location", cell: (s) => s.location || "–" },
          {
            header: "Actions",
            cell: (s) =>
              canEdit && (
                <DeleteButton
                  path={`${path}/${s.id}`}
                  question={`Remove ${noun} ${name(s)} (${s.ip}) from the manager's records?`}
                  reload={list.reload}
                />
              ),
          },
        ]}
      />
    </>
  );
}

export function Schedulers() {
  return (
    <InstanceList<Scheduler>
      title="Schedulers"
      path="/schedulers"
      noun="scheduler"
      columns={[
        { header: "Cluster", cell: (s) => s.scheduler_cluster_id },
        { header: "Features", cell: (s) => (s.features ?? []).join(", ") || "–" },
        { header: "Last keep-alive", cell: (s) => formatTime(s.last_keep_alive_at) },
      ]}
    />
  );
}

export function SeedPeers() {
  return (
    <InstanceList<SeedPeer>
      title="Seed peers"
      path="/seed-peers"
      noun="seed peer"
      columns={[
        { header: "Download port", cell: (s) => s.download_port ?? "–" },
        { header: "Type", cell: (s) => s.type ?? "super" },
        { header: "Cluster", cell: (s) => s.seed_peer_cluster_id },
      ]}
    />
  );
}

export function Hosts() {
  const [type, setType] = useState("");
  const list = usePagedList<SchedulerHost>("/swarm/hosts", { type });
  return (
    <>
      <PageHeader title="Hosts">
        <FilterSelect
          label="Kind"
          value={type}
          options={[
            ["normal", "peers"],
            ["super", "seed peers"],
          ]}
          onChange={(value) => {
            setType(value);
            list.setPage(1);
          }}
        />
      </PageHeader>
      <p className="muted">The hosts the active schedulers know, as they announced themselves, with their upload load.</p>
      <PagedTable<SchedulerHost>
        list={list}
        caption="Hosts"
        rowKey={(h) => `${h.scheduler}-${h.id}`}
        empty="No scheduler knows a host."
        columns={[
          { header: "Host name", cell: (h) => h.hostname },
          { header: "Address", cell: (h) => `${h.ip}:${h.port}` },
          { header: "Kind", cell: (h) => (h.type === "super" ? "seed peer" : "peer") },
          { header: "Version", cell: (h) => h.version || "–" },
          { header: "OS", cell: (h) => [...new Set([h.os, h.platform].filter(Boolean))].join(" ") || "–" },
          { header: "IDC", cell: (h) => h.idc || "–" },
          { header: "Location", cell: (h) => h.location || "–" },
          {
            header: "Upload load",
            cell: (h) => `${h.concurrent_upload_count} / ${h.concurrent_upload_limit}`,
          },
          { header: "Uploads (failed)", cell: (h) => `${h.upload_count} (${h.upload_failed_count})` },
          { header: "Peers", cell: (h) => h.peer_count },
          { header: "Scheduler", cell: (h) => h.scheduler },
          { header: "Last seen", cell: (h) => new Date(h.updated_at * 1000).toLocaleString() },
        ]}
      />
    </>
  );
}
