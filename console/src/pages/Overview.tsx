import { useEffect, useState } from "react";
import { Link } from "react-router-dom";
import { ApiError, list, request } from "../api";
import { ErrorBanner, PageHeader, formatBytes } from "../components";

interface Count {
  label: string;
  path: string;
  query?: Record<string, string>;
  to: string;
}

const COUNTS: Count[] = [
  { label: "Scheduler clusters", path: "/scheduler-clusters", to: "/scheduler-clusters" },
  { label: "Seed peer clusters", path: "/seed-peer-clusters", to: "/seed-peer-clusters" },
  { label: "Active schedulers", path: "/schedulers", query: { state: "active" }, to: "/schedulers" },
  { label: "Active seed peers", path: "/seed-peers", query: { state: "active" }, to: "/seed-peers" },
  { label: "Preheat jobs pending", path: "/jobs", query: { state: "PENDING" }, to: "/jobs" },
];

/** Count the items of a list: the manager's total when it sends one, else by walking the pages (bounded). */
async function countOf(path: string, query: Record<string, string> = {}): Promise<string> {
  const first = await list<unknown>(path, 1, 100, query);
  if (first.total !== null) return String(first.total);
  let count = first.items.length;
  let page = first;
  for (let n = 2; page.hasNext && n <= 20; n += 1) {
    page = await list<unknown>(path, n, 100, query);
    count += page.items.length;
  }
  return page.hasNext ? `${count}+` : String(count);
}

interface Traffic {
  source: number;
  peers: number;
}

export interface SwarmStats {
  schedulers: number;
  hosts: number;
  seed_hosts: number;
  tasks_in_flight: number;
  peers_in_flight: number;
  traffic: { hour: Traffic; day: Traffic };
  errors?: string[];
}

/** Bytes the peers received, what came from origins, and what the swarm saved the origins (the rest). */
export function savings(traffic: Traffic) {
  const delivered = traffic.source + traffic.peers;
  return { delivered, fromOrigins: traffic.source, saved: delivered - traffic.source, share: delivered ? traffic.peers / delivered : 0 };
}

function SwarmFigures() {
  const [stats, setStats] = useState<SwarmStats | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    const load = () =>
      request<SwarmStats>("/swarm/stats")
        .then((found) => live && setStats(found))
        .catch((caught: unknown) => live && setError(caught));
    void load();
    const timer = window.setInterval(() => void load(), 5000);
    return () => {
      live = false;
      window.clearInterval(timer);
    };
  }, []);
  if (error) return <ErrorBanner error={error} />;
  if (!stats) return <p className="muted">Asking the schedulers…</p>;
  const rows: [string, Traffic][] = [
    ["Last hour", stats.traffic.hour],
    ["Last day", stats.traffic.day],
  ];
  return (
    <section aria-label="Swarm figures">
      <h2>What the schedulers see</h2>
      <div className="cards">
        {(
          [
            ["Hosts", stats.hosts],
            ["Seed peer hosts", stats.seed_hosts],
            ["Tasks in flight", stats.tasks_in_flight],
            ["Downloads in flight", stats.peers_in_flight],
          ] as [string, number][]
        ).map(([label, value]) => (
          <div key={label} className="card">
            <span className="card-value" data-testid={`stat-${label}`}>
              {value}
            </span>
            <span className="card-label">{label}</span>
          </div>
        ))}
      </div>
      <div className="table-wrap">
        <table>
          <caption className="sr-only">Bytes by source</caption>
          <thead>
            <tr>
              <th scope="col">Period</th>
              <th scope="col">Delivered to peers</th>
              <th scope="col">Fetched from origins</th>
              <th scope="col">Origin bytes saved</th>
            </tr>
          </thead>
          <tbody>
            {rows.map(([label, traffic]) => {
              const figures = savings(traffic);
              return (
                <tr key={label}>
                  <td data-label="Period">{label}</td>
                  <td data-label="Delivered to peers">{formatBytes(figures.delivered)}</td>
                  <td data-label="Fetched from origins">{formatBytes(figures.fromOrigins)}</td>
                  <td data-label="Origin bytes saved" data-testid={`saved-${label}`}>
                    {formatBytes(figures.saved)} ({Math.round(figures.share * 100)}%)
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {(stats.errors ?? []).length > 0 && <p className="muted">{(stats.errors ?? []).join("; ")}</p>}
    </section>
  );
}

export default function Overview() {
  const [values, setValues] = useState<Record<string, string>>({});
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    for (const count of COUNTS) {
      countOf(count.path, count.query)
        .then((value) => live && setValues((old) => ({ ...old, [count.label]: value })))
        .catch((caught: unknown) => {
          if (!live) return;
          // A manager without that resource (404) shows a dash; anything else is worth saying.
          setValues((old) => ({ ...old, [count.label]: "–" }));
          if (!(caught instanceof ApiError && caught.status === 404)) setError(caught);
        });
    }
    return () => {
      live = false;
    };
  }, []);
  return (
    <>
      <PageHeader title="Overview" />
      <ErrorBanner error={error} />
      <section className="cards" aria-label="Counts">
        {COUNTS.map((count) => (
          <Link key={count.label} className="card" to={count.to}>
            <span className="card-value" data-testid={`count-${count.label}`}>
              {values[count.label] ?? "…"}
            </span>
            <span className="card-label">{count.label}</span>
          </Link>
        ))}
      </section>
      <SwarmFigures />
    </>
  );
}
