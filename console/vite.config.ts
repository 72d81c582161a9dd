import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

// The built assets go into the Python package, so the manager serves them and the wheel carries them.
export default defineConfig({
  plugins: [react()],
  base: "/",
  build: {
    outDir: "../dragonfly/manager/console/dist",
    emptyOutDir: true,
    chunkSizeWarningLimit: 800,
  },
  server: {
    // `npm run dev` against a manager on :8080.
    proxy: { "/api": "http://127.0.0.1:8080", "/healthy": "http://127.0.0.1:8080" },
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    // A component test takes about 1 s on a quiet machine; vitest's 5 s default failed one on a loaded 2-core one.
    testTimeout: 30_000,
  },
});
