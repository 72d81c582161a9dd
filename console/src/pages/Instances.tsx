import { useState } from "react";
import { request } from "../api";
import { useCanEdit } from "../auth";
import { ConfirmButton, ErrorBanner, PageHeader, Pagination, StateBadge, Table, formatTime, usePagedList } from "../components";
import type { Scheduler, SchedulerHost, SeedPeer } from "../types";

function StateFilter({ value, onChange }: { value: string; onChange: (value: string) => void }) {
  return (
    <label className="inline">
      State
      <select value={value} onChange={(e) => onChange(e.target.value)}>
        <option value="">any</option>
        <option value="active">active</option>
        <option value="inactive">inactive</option>
      </select>
    </label>
  );
}

export function Schedulers() {
  const [state, setState] = useState("");
  const canEdit = useCanEdit();
  const { data, page, setPage, error, reload } = usePagedList<Scheduler>("/schedulers", { state });
  return (
    <>
      <PageHeader title="Schedulers">
        <StateFilter value={state} onChange={(v) => { setState(v); setPage(1); }} />
      </PageHeader>
      <ErrorBanner error={error} />
      <Table<Scheduler>
        caption="Schedulers"
        rows={data?.items}
        empty="No schedulers have registered."
        columns={[
          { header: "Host name", cell: (s) => s.host_name ?? s.hostname },
          { header: "Address", cell: (s) => `${s.ip}:${s.port}` },
          { header: "State", cell: (s) => <StateBadge state={s.state} /> },
          { header: "Cluster", cell: (s) => s.scheduler_cluster_id },
          { header: "IDC", cell: (s) => s.idc || "–" },
          { header: "Location", cell: (s) => s.location || "–" },
          { header: "Features", cell: (s) => (s.features ?? []).join(", ") || "–" },
          { header: "Last keep-alive", cell: (s) => formatTime(s.last_keep_alive_at) },
          {
            header: "Actions",
            cell: (s) =>
              canEdit && (
                <ConfirmButton
                  label="Delete"
                  question={`Remove scheduler ${s.host_name ?? s.hostname} (${s.ip}) from the manager's records?`}
                  onConfirm={async () => {
                    await request(`/schedulers/${s.id}`, { method: "DELETE" });
                    reload();
                  }}
                />
              ),
          },
        ]}
      />
      <Pagination page={page} data={data} setPage={setPage} />
    </>
  );
}

export function SeedPeers() {
  const [state, setState] = useState("");
  const canEdit = useCanEdit();
  const { data, page, setPage, error, reload } = usePagedList<SeedPeer>("/seed-peers", { state });
  return (
    <>
      <PageHeader title="Seed peers">
        <StateFilter value={state} onChange={(v) => { setState(v); setPage(1); }} />
      </PageHeader>
      <ErrorBanner error={error} />
      <Table<SeedPeer>
        caption="Seed peers"
        rows={data?.items}
        empty="No seed peers have registered."
        columns={[
          { header: "Host name", cell: (s) => s.host_name ?? s.hostname },
          { header: "Address", cell: (s) => `${s.ip}:${s.port}` },
          { header: "Download port", cell: (s) => s.download_port ?? "–" },
          { header: "Type", cell: (s) => s.type ?? "super" },
          { header: "State", cell: (s) => <StateBadge state={s.state} /> },
          { header: "Cluster", cell: (s) => s.seed_peer_cluster_id },
          { header: "IDC", cell: (s) => s.idc || "–" },
          { header: "Location", cell: (s) => s.location || "–" },
          {
            header: "Actions",
            cell: (s) =>
              canEdit && (
                <ConfirmButton
                  label="Delete"
                  question={`Remove seed peer ${s.host_name ?? s.hostname} (${s.ip}) from the manager's records?`}
                  onConfirm={async () => {
                    await request(`/seed-peers/${s.id}`, { method: "DELETE" });
                    reload();
                  }}
                />
              ),
          },
        ]}
      />
      <Pagination page={page} data={data} setPage={setPage} />
    </>
  );
}

export function Hosts() {
  const [type, setType] = useState("");
  const { data, page, setPage, error } = usePagedList<SchedulerHost>("/swarm/hosts", { type });
  return (
    <>
      <PageHeader title="Hosts">
        <label className="inline">
          Kind
          <select
            value={type}
            onChange={(e) => {
              setType(e.target.value);
              setPage(1);
            }}
          >
            <option value="">any</option>
            <option value="normal">peers</option>
            <option value="super">seed peers</option>
          </select>
        </label>
      </PageHeader>
      <p className="muted">The hosts the active schedulers know, as they announced themselves, with their upload load.</p>
      <ErrorBanner error={error} />
      <Table<SchedulerHost>
        caption="Hosts"
        rows={data?.items}
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
      <Pagination page={page} data={data} setPage={setPage} />
    </>
  );
}
