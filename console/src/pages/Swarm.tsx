import { useEffect, useState, type FormEvent } from "react";
import { Link, useSearchParams } from "react-router-dom";
import { request } from "../api";
import { ErrorBanner, PageHeader, StateBadge, Table, formatBytes } from "../components";
import type { Swarm, SwarmEdge, SwarmPeer } from "../types";

const ORIGIN = "origin";
const NODE_W = 190;
const NODE_H = 70;
const COL_GAP = 90;
const ROW_GAP = 22;
// Vertical room per edge routed above the graph.
const LANE = 26;

export interface Placed {
  id: string;
  label: string;
  column: number;
  row: number;
  peer: SwarmPeer | null;
}

/** Lay the swarm out left to right: the origin, then seed peers, then each peer one column right of its
 * deepest parent (cycles cannot happen: the scheduler keeps a DAG, but a bound keeps a bad answer finite). */
export function layoutSwarm(swarm: Swarm): Placed[] {
  const peers = new Map(swarm.peers.map((peer) => [peer.id, peer]));
  const parents = new Map<string, string[]>();
  for (const edge of swarm.edges) {
    if (!peers.has(edge.parent) || !peers.has(edge.child)) continue;
    parents.set(edge.child, [...(parents.get(edge.child) ?? []), edge.parent]);
  }
  const column = new Map<string, number>();
  const columnOf = (id: string, depth: number): number => {
    const known = column.get(id);
    if (known !== undefined) return known;
    const peer = peers.get(id);
    let value = peer?.is_seed ? 1 : 2;
    if (depth < 64) {
      for (const parent of parents.get(id) ?? []) value = Math.max(value, columnOf(parent, depth + 1) + 1);
    }
    if (peer?.is_seed) value = 1;
    column.set(id, value);
    return value;
  };
  const placed: Placed[] = [];
  const rows = new Map<number, number>();
  const hasOrigin = swarm.peers.some((peer) => peer.bytes_from_source > 0 || peer.state === "BackToSource");
  if (hasOrigin) {
    placed.push({ id: ORIGIN, label: "origin", column: 0, row: 0, peer: null });
    rows.set(0, 1);
  }
  const ordered = [...swarm.peers].sort((a, b) => Number(b.is_seed) - Number(a.is_seed) || a.hostname.localeCompare(b.hostname));
  for (const peer of ordered) {
    const col = columnOf(peer.id, 0);
    const row = rows.get(col) ?? 0;
    rows.set(col, row + 1);
    placed.push({ id: peer.id, label: peer.hostname || peer.ip, column: col, row, peer });
  }
  // Close the gaps left by absent columns (no origin, or no seed peers).
  const used = [...new Set(placed.map((p) => p.column))].sort((a, b) => a - b);
  return placed.map((p) => ({ ...p, column: used.indexOf(p.column) }));
}

function progress(peer: SwarmPeer): number {
  if (peer.state === "Succeeded") return 1;
  return peer.total_pieces > 0 ? Math.min(1, peer.finished_pieces / peer.total_pieces) : 0;
}

function SwarmGraph({ swarm }: { swarm: Swarm }) {
  const placed = layoutSwarm(swarm);
  const at = new Map(placed.map((p) => [p.id, p]));
  const columns = Math.max(1, ...placed.map((p) => p.column + 1));
  const rows = Math.max(1, ...placed.map((p) => p.row + 1));
  const edges: (SwarmEdge & { key: string })[] = swarm.edges
    .filter((e) => at.has(e.parent) && at.has(e.child))
    .map((e) => ({ ...e, key: `${e.parent}>${e.child}` }));
  for (const peer of swarm.peers) {
    // A peer fetching from the origin gets its edge at once, before its first piece is counted.
    if ((peer.bytes_from_source > 0 || peer.state === "BackToSource") && at.has(ORIGIN))
      edges.push({
        parent: ORIGIN,
        child: peer.id,
        bytes: peer.bytes_from_source,
        pieces: 0,
        active: peer.state === "BackToSource",
        key: `origin>${peer.id}`,
      });
  }
  const heaviest = Math.max(1, ...edges.map((e) => e.bytes));
  // Edges between neighbouring columns are drawn straight across; the others (skipping a column, or going back)
  // would pass behind the boxes in between, so each gets a lane of its own above the graph.
  const overTop = (from: Placed, to: Placed) => to.column !== from.column + 1;
  const lanes = new Map<string, number>();
  for (const edge of edges) {
    const from = at.get(edge.parent);
    const to = at.get(edge.child);
    if (from && to && overTop(from, to)) lanes.set(edge.key, lanes.size + 1);
  }
  const top = 10 + LANE * lanes.size;
  const width = columns * NODE_W + (columns - 1) * COL_GAP + 20;
  const height = top + rows * NODE_H + (rows - 1) * ROW_GAP + 10;
  const x = (p: Placed) => 10 + p.column * (NODE_W + COL_GAP);
  const y = (p: Placed) => top + p.row * (NODE_H + ROW_GAP);
  return (
    <div className="swarm-graph">
      <svg
        role="img"
        aria-label={`Swarm of task ${swarm.task_id}: ${swarm.peers.length} peers, ${swarm.edges.length} parent to child edges`}
        viewBox={`0 0 ${width} ${height}`}
        width={width}
        height={height}
      >
        <defs>
          <marker
            id="arrow"
            viewBox="0 0 10 10"
            refX="9"
            refY="5"
            markerWidth="10"
            markerHeight="10"
            markerUnits="userSpaceOnUse"
            orient="auto"
          >
            <path d="M0,0 L10,5 L0,10 z" fill="#7a8699" />
          </marker>
        </defs>
        {edges.map((edge) => {
          const from = at.get(edge.parent);
          const to = at.get(edge.child);
          if (!from || !to) return null;
          const widthPx = 1 + 7 * Math.sqrt(edge.bytes / heaviest);
          const lane = lanes.get(edge.key);
          let d: string;
          let labelX: number;
          let labelY: number;
          if (lane === undefined) {
            const x1 = x(from) + NODE_W;
            const y1 = y(from) + NODE_H / 2;
            const x2 = x(to);
            const y2 = y(to) + NODE_H / 2;
            labelX = (x1 + x2) / 2;
            labelY = (y1 + y2) / 2 - 4;
            d = `M${x1},${y1} C${labelX},${y1} ${labelX},${y2} ${x2},${y2}`;
          } else {
            // From the parent's top to the child's top, through this edge's lane above the graph.
            const x1 = x(from) + NODE_W / 2 + 12;
            const x2 = x(to) + NODE_W / 2 - 12;
            const y1 = y(from);
            const y2 = y(to);
            const laneY = top - LANE * lane;
            labelX = (x1 + x2) / 2;
            labelY = laneY + 0.25 * (Math.min(y1, y2) - laneY) + 12;
            d = `M${x1},${y1} C${x1},${laneY} ${x2},${laneY} ${x2},${y2}`;
          }
          return (
            <g key={edge.key} className={edge.active ? "edge active" : "edge"} data-testid="swarm-edge">
              <path
                d={d}
                strokeWidth={widthPx}
                fill="none"
                markerEnd="url(#arrow)"
              >
                <title>{`${at.get(edge.parent)?.label} → ${at.get(edge.child)?.label}: ${formatBytes(edge.bytes)}`}</title>
              </path>
              <text x={labelX} y={labelY} textAnchor="middle" className="edge-label">
                {formatBytes(edge.bytes)}
              </text>
            </g>
          );
        })}
        {placed.map((p) => {
          const kind = p.peer === null ? "origin" : p.peer.is_seed ? "seed" : "peer";
          const share = p.peer ? progress(p.peer) : 1;
          return (
            <g key={p.id} transform={`translate(${x(p)},${y(p)})`} className={`node ${kind}`} data-testid="swarm-node">
              <rect width={NODE_W} height={NODE_H} rx={6} />
              <text x={8} y={17} className="node-title">
                {p.label.length > 24 ? `${p.label.slice(0, 23)}…` : p.label}
              </text>
              {p.peer ? (
                <>
                  <text x={8} y={33} className="node-detail">
                    {kind === "seed" ? "seed · " : ""}
                    {p.peer.state} · {Math.round(share * 100)}%
                  </text>
                  <text x={8} y={49} className="node-detail">
                    peers {formatBytes(p.peer.bytes_from_parents)} · origin {formatBytes(p.peer.bytes_from_source)}
                  </text>
                  <rect x={8} y={56} width={NODE_W - 16} height={6} className="bar-bg" />
                  <rect x={8} y={56} width={(NODE_W - 16) * share} height={6} className="bar" />
                </>
              ) : (
                <text x={8} y={35} className="node-detail">
                  {swarm.url ? (swarm.url.length > 28 ? `${swarm.url.slice(0, 27)}…` : swarm.url) : "the source"}
                </text>
              )}
            </g>
          );
        })}
      </svg>
    </div>
  );
}

interface RecentTask {
  task_id: string;
  url: string;
  state: string;
  content_length: number;
  peers: number;
  peers_in_flight: number;
  updated_at: number;
  scheduler: string;
}

/** The tasks the schedulers saw most recently, to pick one from (refreshed every 5 s). */
function RecentTasks() {
  const [tasks, setTasks] = useState<RecentTask[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    const load = () =>
      request<{ items: RecentTask[] }>("/swarm/tasks")
        .then((found) => live && setTasks(found.items))
        .catch((caught: unknown) => live && setError(caught));
    void load();
    const timer = window.setInterval(() => void load(), 5000);
    return () => {
      live = false;
      window.clearInterval(timer);
    };
  }, []);
  return (
    <section aria-label="Recent tasks">
      <h2>Recent tasks</h2>
      <ErrorBanner error={error} />
      <Table<RecentTask & { id?: string }>
        caption="Recent tasks"
        rows={tasks ?? undefined}
        rowKey={(t) => `${t.scheduler}-${t.task_id}`}
        empty="No scheduler has seen a task yet."
        columns={[
          {
            header: "URL",
            cell: (t) => (
              <Link className="url" to={`/swarm?task=${t.task_id}`}>
                {t.url || t.task_id}
              </Link>
            ),
          },
          { header: "State", cell: (t) => <StateBadge state={t.state} /> },
          { header: "Size", cell: (t) => formatBytes(t.content_length) },
          { header: "Peers (in flight)", cell: (t) => `${t.peers} (${t.peers_in_flight})` },
          { header: "Last activity", cell: (t) => new Date(t.updated_at * 1000).toLocaleString() },
        ]}
      />
    </section>
  );
}

/** The swarm view of the task in the address (``?task=``); a new task starts a fresh view. */
export default function SwarmPage() {
  const [params] = useSearchParams();
  return <SwarmView key={params.get("task") ?? ""} />;
}

function SwarmView() {
  const [params, setParams] = useSearchParams();
  const target = params.get("task") ?? "";
  const [input, setInput] = useState(target);
  const [live, setLive] = useState(true);
  const [swarm, setSwarm] = useState<Swarm | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);

  useEffect(() => {
    if (!target) return;
    const controller = new AbortController();
    const query = target.includes("://") ? { url: target } : { task_id: target };
    request<Swarm>("/swarm", { query, signal: controller.signal })
      .then((found) => {
        setSwarm(found);
        setError(null);
      })
      .catch((caught: unknown) => {
        if (!(caught instanceof DOMException && caught.name === "AbortError")) setError(caught);
      });
    return () => controller.abort();
  }, [target, tick]);

  useEffect(() => {
    if (!target || !live) return;
    const timer = window.setInterval(() => setTick((t) => t + 1), 1000);
    return () => window.clearInterval(timer);
  }, [target, live]);

  const submit = (event: FormEvent) => {
    event.preventDefault();
    const value = input.trim();
    setSwarm(null);
    setParams(value ? { task: value } : {});
  };

  const totals = swarm
    ? {
        peers: swarm.peers.reduce((sum, p) => sum + p.bytes_from_parents, 0),
        origin: swarm.peers.reduce((sum, p) => sum + p.bytes_from_source, 0),
      }
    : null;

  return (
    <>
      <PageHeader title="Swarm view" />
      <form className="actions swarm-form" onSubmit={submit} role="search">
        <label className="inline grow">
          Task ID or URL
          <input name="task" value={input} onChange={(e) => setInput(e.target.value)} placeholder="https://… or a task id" />
        </label>
        <button type="submit" className="primary">
          Show
        </button>
        <label className="checkbox">
          <input type="checkbox" checked={live} onChange={(e) => setLive(e.target.checked)} />
          Live (every second)
        </label>
      </form>
      <ErrorBanner error={error} />
      {!target && (
        <>
          <p className="muted">Enter a task, or pick one below, to see which host gets its bytes from where.</p>
          <RecentTasks />
        </>
      )}
      {swarm && totals && (
        <>
          <p data-testid="swarm-summary">
            Task <code>{swarm.task_id.slice(0, 16)}</code> · <StateBadge state={swarm.state} /> ·{" "}
            {swarm.peers.length} peers · {formatBytes(swarm.content_length)} · from peers {formatBytes(totals.peers)},
            from the origin {formatBytes(totals.origin)}
          </p>
          {(swarm.errors ?? []).length > 0 && <div className="error">{(swarm.errors ?? []).join("; ")}</div>}
          {swarm.peers.length === 0 ? (
            <p className="muted">No scheduler knows a peer of this task (yet).</p>
          ) : (
            <SwarmGraph swarm={swarm} />
          )}
          <h2>Hosts</h2>
          <Table<SwarmPeer & { id: string }>
            caption="Peers of the task"
            rows={swarm.peers}
            columns={[
              { header: "Host", cell: (p) => p.hostname },
              { header: "IP", cell: (p) => p.ip },
              { header: "Kind", cell: (p) => (p.is_seed ? "seed peer" : "peer") },
              { header: "State", cell: (p) => <StateBadge state={p.state} /> },
              { header: "Progress", cell: (p) => `${p.finished_pieces} / ${p.total_pieces} pieces` },
              { header: "From peers", cell: (p) => formatBytes(p.bytes_from_parents) },
              { header: "From origin", cell: (p) => formatBytes(p.bytes_from_source) },
            ]}
          />
        </>
      )}
    </>
  );
}
