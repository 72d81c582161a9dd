import { describe, expect, it } from "vitest";
import type { Job } from "../types";
import { EMPTY_PREHEAT, hostResults, preheatBody, validatePreheat } from "./Jobs";

const base = EMPTY_PREHEAT;

describe("preheat form", () => {
  it("builds Dragonfly's job body", () => {
    expect(
      preheatBody({ ...base, urls: "http://a/x\nhttp://a/y", headers: "X-A: 1", tag: "t", clusters: [1] }),
    ).toEqual({
      type: "preheat",
      args: { type: "file", scope: "single_seed_peer", urls: ["http://a/x", "http://a/y"], tag: "t", headers: { "X-A": "1" } },
      scheduler_cluster_ids: [1],
    });
    expect(
      preheatBody({ ...base, kind: "image", urls: "https://r.io/v2/lib/app/manifests/1.0", scope: "all_peers", count: "3" }),
    ).toEqual({
      type: "preheat",
      args: { type: "image", scope: "all_peers", url: "https://r.io/v2/lib/app/manifests/1.0", platform: "linux/amd64", count: 3 },
    });
  });

  it("names what is wrong", () => {
    expect(validatePreheat(base)).toEqual(["Enter at least one URL."]);
    expect(validatePreheat({ ...base, kind: "image", urls: "https://r.io/lib/app:1.0" })).toEqual([
      '"https://r.io/lib/app:1.0" is not a manifest URL (scheme://registry/v2/<repository>/manifests/<tag or digest>).',
    ]);
    expect(validatePreheat({ ...base, urls: "http://a/x", headers: "nocolon", scope: "all_peers", count: "900" })).toEqual([
      'Header "nocolon" is not "Name: value".',
      "Count: 1 to 200.",
    ]);
  });
});

describe("hostResults", () => {
  it("flattens per-scheduler results into per-host rows", () => {
    const job: Job = {
      id: 1,
      type: "preheat",
      state: "SUCCESS",
      result: {
        job_states: [
          {
            results: [
              {
                scheduler_cluster_id: 1,
                success_tasks: [{ url: "http://a/x", hostname: "seed", ip: "10.0.0.1" }],
                failure_tasks: [{ url: "http://a/x", hostname: "p1", ip: "10.0.0.2", description: "timeout" }],
              },
              null,
            ],
          },
        ],
      },
    };
    expect(hostResults(job).map((r) => [r.hostname, r.ok, r.description])).toEqual([
      ["seed", true, undefined],
      ["p1", false, "timeout"],
    ]);
  });
});
