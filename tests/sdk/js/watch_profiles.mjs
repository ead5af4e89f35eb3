// A matrix-js-sdk client that watches MSC4429 profile updates and reports them on stdout.
//
// Usage: node watch_profiles.mjs   (settings come from the environment, see below)
//
//   JSSDK_PROJECT_DIR  directory whose node_modules holds matrix-js-sdk (the test cache)
//   MATRIX_BASE_URL, MATRIX_ACCESS_TOKEN, MATRIX_USER_ID, MATRIX_DEVICE_ID
//   PROFILE_FIELDS     JSON list of profile fields passed as unstableMSC4429SyncUserProfileFields
//
// stdout carries one JSON object per line and nothing else:
//   {"type": "filter", "body": {...}}             the sync filter js-sdk uploaded
//   {"type": "profile", "user_id": "...", "profile": {...} | null}
//                                                  one ClientEvent.UserProfileUpdate
//   {"type": "sync", "state": "PREPARED" | ...}    a sync state change (PREPARED follows the
//                                                  first /sync, after its profile updates)
//   {"type": "timeline", "room_id": "...", "sender": "...", "body": "..."}
//                                                  an m.room.message in a room's live timeline
// js-sdk's own logging (loglevel → console.*) goes to stderr.
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

function emit(record) {
    // Writes to a pipe are synchronous on Linux, so lines are never interleaved or lost.
    process.stdout.write(JSON.stringify(record) + "\n");
}

// Redirect every console method before the SDK is loaded: its logger writes to stdout.
for (const method of ["log", "info", "debug", "trace", "warn", "error"]) {
    console[method] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

const env = process.env;
const require = createRequire(path.join(env.JSSDK_PROJECT_DIR, "package.json"));
const sdk = await import(pathToFileURL(require.resolve("matrix-js-sdk")).href);
const { ClientEvent, RoomEvent, createClient } = sdk;

// Record the filter upload (POST /user/{userId}/filter) on its way out: it shows which
// MSC4429 filter key js-sdk chose after reading /versions.
async function fetchFn(input, init) {
    const url = input instanceof Request ? input.url : String(input);
    if ((init?.method ?? "GET") === "POST" && /\/user\/[^/]+\/filter$/.test(new URL(url).pathname)) {
        emit({ type: "filter", body: JSON.parse(init.body) });
    }
    return globalThis.fetch(input, init);
}

const client = createClient({
    baseUrl: env.MATRIX_BASE_URL,
    accessToken: env.MATRIX_ACCESS_TOKEN,
    userId: env.MATRIX_USER_ID,
    deviceId: env.MATRIX_DEVICE_ID,
    fetchFn,
});
client.on(ClientEvent.UserProfileUpdate, (userId, profile) => {
    emit({ type: "profile", user_id: userId, profile });
});
client.on(ClientEvent.Sync, (state) => emit({ type: "sync", state }));
client.on(RoomEvent.Timeline, (event, room, toStartOfTimeline) => {
    if (!toStartOfTimeline && event.getType() === "m.room.message") {
        emit({
            type: "timeline",
            room_id: room?.roomId ?? null,
            sender: event.getSender(),
            body: event.getContent().body ?? null,
        });
    }
});

function stop() {
    client.stopClient();
    process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

await client.startClient({
    unstableMSC4429SyncUserProfileFields: JSON.parse(env.PROFILE_FIELDS),
});
