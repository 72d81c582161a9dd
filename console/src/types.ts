// Shapes of the manager's REST resources, as the console uses them (Dragonfly's field names).

export interface Base {
  id: number;
  created_at?: string;
  updated_at?: string;
}

export interface Scopes {
  idc?: string;
  location?: string;
  cidrs?: string[] | null;
  hostnames?: string[] | null;
}

export interface SchedulerCluster extends Base {
  name: string;
  bio?: string;
  scopes?: Scopes | null;
  config?: { candidate_parent_limit?: number; filter_parent_limit?: number; job_rate_limit?: number } | null;
  client_config?: { load_limit?: number } | null;
  seed_client_config?: Record<string, unknown> | null;
  is_default?: boolean;
  seed_peer_cluster_ids?: number[];
}

export interface SeedPeerCluster extends Base {
  name: string;
  bio?: string;
  config?: { load_limit?: number } | null;
  scheduler_cluster_ids?: number[];
}

export interface Scheduler extends Base {
  host_name?: string;
  hostname?: string;
  idc?: string;
  location?: string;
  ip: string;
  port: number;
  state: string;
  features?: string[] | null;
  scheduler_cluster_id: number;
  last_keep_alive_at?: string | null;
}

export interface SeedPeer extends Base {
  host_name?: string;
  hostname?: string;
  type?: string;
  idc?: string;
  location?: string;
  ip: string;
  port: number;
  download_port?: number;
  state: string;
  seed_peer_cluster_id: number;
}

export interface User extends Base {
  name: string;
  email?: string;
  state?: string;
  bio?: string;
  roles?: string[];
}

export interface Role {
  name?: string;
  description?: string;
  role?: string;
  permissions?: { object: string; action: string }[];
}

export interface Token extends Base {
  name: string;
  bio?: string;
  token?: string;
  scopes?: string[];
  state?: string;
  expired_at?: string;
  user_id?: number;
}

export interface Audit extends Base {
  actor_type?: string;
  actor_name?: string;
  event_type?: string;
  operation?: string;
  path?: string;
  status_code?: number;
  state?: string;
  operated_at?: string;
}

export interface PreheatTaskResult {
  url?: string;
  hostname?: string;
  ip?: string;
  description?: string;
}

export interface JobStateEntry {
  task_uuid?: string;
  task_name?: string;
  state?: string;
  error?: string;
  results?: ({
    success_tasks?: PreheatTaskResult[] | null;
    failure_tasks?: PreheatTaskResult[] | null;
    scheduler_cluster_id?: number;
  } | null)[] | null;
}

export interface Job extends Base {
  task_id?: string;
  bio?: string;
  type: string;
  state: string;
  args?: Record<string, unknown> | null;
  result?: { state?: string; error?: string; job_states?: JobStateEntry[] | null } | null;
  progress?: { phase?: string; clusters?: number; clusters_done?: number } | null;
  user_id?: number;
  scheduler_clusters?: { id: number; name: string }[] | null;
}

export interface SwarmPeer {
  id: string;
  host_id: string;
  hostname: string;
  ip: string;
  is_seed: boolean;
  state: string;
  finished_pieces: number;
  total_pieces: number;
  bytes_from_parents: number;
  bytes_from_source: number;
  scheduler?: string;
}

export interface SwarmEdge {
  parent: string;
  child: string;
  bytes: number;
  pieces: number;
  active: boolean;
}

export interface Swarm {
  task_id: string;
  url?: string;
  content_length: number;
  piece_length: number;
  total_pieces: number;
  state: string;
  peers: SwarmPeer[];
  edges: SwarmEdge[];
  schedulers?: string[];
  errors?: string[];
}

export interface SchedulerHost {
  id: string;
  hostname: string;
  ip: string;
  port: number;
  download_port: number;
  type: string;
  idc: string;
  location: string;
  os: string;
  platform: string;
  version: string;
  concurrent_upload_count: number;
  concurrent_upload_limit: number;
  upload_count: number;
  upload_failed_count: number;
  peer_count: number;
  updated_at: number;
  scheduler: string;
}
