import { describe, expect, it } from "vitest";
import { clusterBody, validateCluster } from "./Clusters";

const good = {
  name: "cluster-2",
  bio: "",
  idc: "",
  location: "",
  cidrs: "10.0.0.0/8, 192.168.1.0/24",
  hostnames: "^peer-.*$",
  candidateParentLimit: "4",
  filterParentLimit: "15",
  jobRateLimit: "10",
  peerLoadLimit: "200",
  isDefault: false,
  linked: [] as number[],
};

describe("validateCluster", () => {
  it("accepts a sound cluster", () => {
    expect(validateCluster(good)).toEqual([]);
  });

  it("names each problem before anything is sent", () => {
    const problems = validateCluster({
      ...good,
      name: "",
      cidrs: "10.0.0.0",
      hostnames: "([",
      candidateParentLimit: "0",
      filterParentLimit: "abc",
    });
    expect(problems).toEqual([
      "Name is required.",
      'CIDR "10.0.0.0" is not a CIDR.',
      'Host name pattern "([" is not a regular expression.',
      "Candidate parent limit: a whole number from 1 to 20.",
      "Filter parent limit: a whole number from 10 to 1000.",
    ]);
  });
});

describe("clusterBody", () => {
  it("sends the manager's scheduler-cluster fields", () => {
    expect(clusterBody({ ...good, linked: [2] })).toEqual({
      name: "cluster-2",
      bio: "",
      scopes: { idc: "", location: "", cidrs: ["10.0.0.0/8", "192.168.1.0/24"], hostnames: ["^peer-.*$"] },
      config: { candidate_parent_limit: 4, filter_parent_limit: 15, job_rate_limit: 10 },
      client_config: { load_limit: 200 },
      is_default: false,
      seed_peer_cluster_ids: [2],
    });
  });
});
