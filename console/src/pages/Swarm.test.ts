import { describe, expect, it } from "vitest";
import type { Swarm, SwarmPeer } from "../types";
import { layoutSwarm } from "./Swarm";

function peer(id: string, patch: Partial<SwarmPeer> = {}): SwarmPeer {
  return {
    id,
    host_id: `h-${id}`,
    hostname: id,
    ip: "127.0.0.1",
    is_seed: false,
    state: "Running",
    finished_pieces: 0,
    total_pieces: 4,
    bytes_from_parents: 0,
    bytes_from_source: 0,
    ...patch,
  };
}

describe("layoutSwarm", () => {
  it("puts the origin, then seeds, then each peer right of its parents", () => {
    const swarm: Swarm = {
      task_id: "t",
      content_length: 100,
      piece_length: 25,
      total_pieces: 4,
      state: "Running",
      peers: [peer("b"), peer("a"), peer("seed", { is_seed: true, bytes_from_source: 100 })],
      edges: [
        { parent: "seed", child: "a", bytes: 50, pieces: 2, active: true },
        { parent: "a", child: "b", bytes: 25, pieces: 1, active: true },
        { parent: "seed", child: "b", bytes: 25, pieces: 1, active: false },
      ],
    };
    const columns = Object.fromEntries(layoutSwarm(swarm).map((p) => [p.id, p.column]));
    expect(columns).toEqual({ origin: 0, seed: 1, a: 2, b: 3 });
  });

  it("closes the gaps and survives a cycle in a bad answer", () => {
    const swarm: Swarm = {
      task_id: "t",
      content_length: 0,
      piece_length: 0,
      total_pieces: 0,
      state: "Running",
      peers: [peer("a"), peer("b")],
      edges: [
        { parent: "a", child: "b", bytes: 1, pieces: 1, active: true },
        { parent: "b", child: "a", bytes: 1, pieces: 1, active: true },
      ],
    };
    const placed = layoutSwarm(swarm);
    expect(placed).toHaveLength(2);
    expect(Math.min(...placed.map((p) => p.column))).toBe(0);
  });
});

describe("savings", () => {
  it("counts what did not come from the origins", async () => {
    const { savings } = await import("./Overview");
    expect(savings({ source: 100, peers: 300 })).toEqual({ delivered: 400, fromOrigins: 100, saved: 300, share: 0.75 });
    expect(savings({ source: 0, peers: 0 }).share).toBe(0);
  });
});
