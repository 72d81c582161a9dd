import { act, cleanup, render, screen } from "@testing-library/react";
import { MemoryRouter, Route, Routes } from "react-router-dom";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { Swarm } from "../types";
import SwarmView from "./Swarm";

afterEach(() => {
  cleanup();
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

function swarmWith(peers: number): Swarm {
  const all = [
    { id: "s", hostname: "seed-peer", is_seed: true, bytes_from_source: 100, bytes_from_parents: 0 },
    { id: "a", hostname: "peer-1", is_seed: false, bytes_from_source: 0, bytes_from_parents: 60 },
    { id: "b", hostname: "peer-2", is_seed: false, bytes_from_source: 0, bytes_from_parents: 40 },
  ].slice(0, peers);
  return {
    task_id: "f".repeat(64),
    url: "http://origin/file",
    content_length: 100,
    piece_length: 25,
    total_pieces: 4,
    state: "Running",
    peers: all.map((p) => ({ ...p, host_id: p.id, ip: "10.0.0.1", state: "Running", finished_pieces: 2, total_pieces: 4 })),
    edges: [
      { parent: "s", child: "a", bytes: 60, pieces: 2, active: true },
      // Skips peer-1's column: drawn over the top, still one edge.
      { parent: "s", child: "b", bytes: 20, pieces: 1, active: false },
      { parent: "a", child: "b", bytes: 20, pieces: 1, active: true },
    ].filter((e) => all.some((p) => p.id === e.child)),
  };
}

describe("SwarmView", () => {
  it("asks the manager every second and redraws as peers join", async () => {
    vi.useFakeTimers();
    const answers = [swarmWith(2), swarmWith(3)];
    const urls: string[] = [];
    vi.stubGlobal(
      "fetch",
      vi.fn(async (url: URL) => {
        urls.push(String(url));
        return new Response(JSON.stringify(answers[Math.min(urls.length - 1, 1)]), { status: 200 });
      }),
    );
    render(
      <MemoryRouter initialEntries={["/swarm?task=http%3A%2F%2Forigin%2Ffile"]}>
        <Routes>
          <Route path="/swarm" element={<SwarmView />} />
        </Routes>
      </MemoryRouter>,
    );
    await act(async () => {
      await vi.advanceTimersByTimeAsync(10);
    });
    expect(urls[0]).toContain("/api/v1/swarm?url=http%3A%2F%2Forigin%2Ffile");
    // origin + seed + peer-1; origin→seed and seed→peer-1.
    expect(screen.getAllByTestId("swarm-node")).toHaveLength(3);
    expect(screen.getAllByTestId("swarm-edge")).toHaveLength(2);
    await act(async () => {
      await vi.advanceTimersByTimeAsync(1000);
    });
    expect(screen.getAllByTestId("swarm-node")).toHaveLength(4);
    expect(screen.getAllByTestId("swarm-edge")).toHaveLength(4);
    expect(screen.getByTestId("swarm-summary").textContent).toContain("3 peers");
    expect(screen.getByRole("table", { name: "Peers of the task" }).textContent).toContain("peer-2");
  });
});
