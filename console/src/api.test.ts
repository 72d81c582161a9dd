import { afterEach, describe, expect, it, vi } from "vitest";
import { ApiError, describeError, lastPageFromLink, list, request, setToken } from "./api";

afterEach(() => {
  vi.unstubAllGlobals();
  setToken(null);
});

describe("describeError", () => {
  it("reads every error shape the manager may send", () => {
    expect(describeError(409, { message: "cluster exists" })).toBe("cluster exists");
    expect(describeError(422, { errors: "name is required" })).toBe("name is required");
    expect(describeError(422, { detail: [{ loc: ["body", "name"], msg: "field required" }] })).toBe(
      "name: field required",
    );
    expect(describeError(500, null)).toBe("500 Internal Server Error");
    expect(describeError(418, "")).toBe("418");
  });
});

describe("lastPageFromLink", () => {
  it("finds rel=last", () => {
    const link = '</api/v1/clusters?page=2&per_page=10>;rel=next,</api/v1/clusters?page=7&per_page=10>;rel="last"';
    expect(lastPageFromLink(link)).toBe(7);
    expect(lastPageFromLink(null)).toBeNull();
    expect(lastPageFromLink("<x?page=1>;rel=prev")).toBeNull();
  });
});

function stubFetch(status: number, body: unknown, headers: Record<string, string> = {}) {
  const calls: { url: string; init: RequestInit }[] = [];
  vi.stubGlobal(
    "fetch",
    vi.fn(async (url: URL, init: RequestInit) => {
      calls.push({ url: String(url), init });
      return new Response(body === undefined ? null : JSON.stringify(body), {
        status,
        headers: { "Content-Type": "application/json", ...headers },
      });
    }),
  );
  return calls;
}

describe("request and list", () => {
  it("sends the bearer token and JSON body", async () => {
    setToken("abc");
    const calls = stubFetch(201, { id: 3 });
    const created = await request<{ id: number }>("/clusters", { method: "POST", body: { name: "x" } });
    expect(created.id).toBe(3);
    const headers = calls[0]?.init.headers as Record<string, string>;
    expect(headers.Authorization).toBe("Bearer abc");
    expect(calls[0]?.init.body).toBe('{"name":"x"}');
  });

  it("turns an error answer into an ApiError with the manager's words", async () => {
    stubFetch(403, { message: "permission denied" });
    await expect(request("/users", { method: "POST", body: {} })).rejects.toEqual(
      new ApiError(403, "permission denied"),
    );
  });

  it("pages with a total count or a Link header", async () => {
    let calls = stubFetch(200, [{ id: 1 }], { "X-Total-Count": "11" });
    let page = await list<{ id: number }>("/clusters", 1, 10);
    expect(page.total).toBe(11);
    expect(page.hasNext).toBe(true);
    expect(calls[0]?.url).toContain("page=1&per_page=10");
    calls = stubFetch(200, [{ id: 1 }], { Link: '</api/v1/clusters?page=2>;rel="last"' });
    page = await list<{ id: number }>("/clusters", 2, 10);
    expect(page.hasNext).toBe(false);
    expect(page.total).toBe(11);
    expect(calls).toHaveLength(1);
  });
});
