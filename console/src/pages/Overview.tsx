import { useEffect, useState } from "react";
import { Link } from "react-router-dom";
import { ApiError, list } from "../api";
import { ErrorBanner, PageHeader } from "../components";

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
    </>
  );
}
