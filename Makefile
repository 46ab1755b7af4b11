# The two commands of the README: `make demo` and `make test`. Both fetch what they need.
CARGO ?= cargo

.PHONY: demo test test-deps assets check-cuda bench bench-setup bench-faces bench-curate bench-caption lint

## Fetch the face-api package (weights, sample photographs) and CLIP's BPE vocabulary into
## $IDFORGE_CACHE, once.
assets:
	tools/fetch-assets >/dev/null
	tools/clip-reference/fetch-vocab >/dev/null

## Ingest the face-api sample photographs, curate them (faces table, crops,
## runs/demo/curate/report.html), caption them offline (captions table), export the
## dataset (runs/demo/dataset/, loads in Hugging Face `datasets`), print the tables; then
## benchmark on the exported identities: copy-reference and two imported baseline method
## folders; a tiny $(DEMO_METHOD) adapter trained for a few CPU steps (each in-train identity's
## reference and its mirror, datasets/demo-train-photos → runs/demo-train, curated, captioned,
## exported, `idforge train`), rendered by `bench generate` with its training costs
## (--train-run) beside the text-only baseline; all scored; the preference arena served on a free loopback port, 8 scripted raters
## voting, the votes exported to runs/demo/bench/arena/votes.parquet and the server stopped;
## the leaderboard in runs/demo/bench/leaderboard/index.html; finally `idforge generate` on the
## tiny random-weight diffusers pipeline of the tests (no real checkpoint is fetched: its image is
## noise, the point is the command).
## The adapter the demo trains (an `idforge train --method` that trains on SD 1.x), the tiny
## random-weight SD pipeline of the tests and the tiny ArcFace of the model tests it trains with.
DEMO_METHOD ?= ip-adapter-faceid
DEMO_MODEL := diffusion/tests/fixtures/tiny-sd
DEMO_ARCFACE := models/tests/fixtures/iresnet/iresnet50_w4.onnx

demo: assets
	$(CARGO) run --quiet -- ingest --recipe datasets/recipes/demo.toml
	$(CARGO) run --quiet -- curate --recipe datasets/recipes/demo.toml
	$(CARGO) run --quiet -- caption --recipe datasets/recipes/demo.toml
	$(CARGO) run --quiet -- dataset export runs/demo
	$(CARGO) run --quiet -- show runs/demo --rows 6
	test -f runs/demo/bench/protocol.toml || $(CARGO) run --quiet -- bench init runs/demo/bench \
		--protocol datasets/benchmarks/demo-v1.toml --from-dataset runs/demo/dataset --identities-per-set 4 \
		--drop-faceless-references
	for m in flipped-reference other-identity; do \
		$(CARGO) run --quiet -- bench baseline $$m --bench runs/demo/bench -o runs/demo/methods/$$m && \
		$(CARGO) run --quiet -- bench import runs/demo/methods/$$m --bench runs/demo/bench || exit 1; \
	done
	IDFORGE="$(CARGO) run --quiet --" datasets/demo-train-photos runs/demo/bench runs/demo-train-photos
	rm -rf runs/demo-train
	$(CARGO) run --quiet -- ingest --recipe datasets/recipes/demo-train.toml
	$(CARGO) run --quiet -- curate --recipe datasets/recipes/demo-train.toml
	$(CARGO) run --quiet -- caption --recipe datasets/recipes/demo-train.toml
	$(CARGO) run --quiet -- dataset export runs/demo-train
	$(CARGO) run --quiet -- train --name demo-train --runs-dir runs --method $(DEMO_METHOD) \
		--model $(DEMO_MODEL) --dataset runs/demo-train/dataset --arcface $(DEMO_ARCFACE) \
		--resolution 64 --batch-size 2 --steps 6 --lr 1e-3 --checkpoint-every 3
	rm -rf runs/demo/bench/renders
	$(CARGO) run --quiet -- bench generate runs/demo/bench --method $(DEMO_METHOD)-demo \
		--model $(DEMO_MODEL) --arcface $(DEMO_ARCFACE) --train-run runs/demo-train/train \
		--steps 4 --id-start-step 1
	$(CARGO) run --quiet -- bench generate runs/demo/bench --method text-only --model $(DEMO_MODEL) \
		--steps 4 --id-start-step 0
	$(CARGO) run --quiet -- bench score runs/demo/bench
	rm -f runs/demo/arena/votes.sqlite runs/demo/arena/votes.sqlite-wal runs/demo/arena/votes.sqlite-shm
	mkdir -p runs/demo/arena
	$(CARGO) build --quiet
	log=runs/demo/arena/serve.log; \
	$(CARGO) run --quiet -- arena serve runs/demo/bench --db runs/demo/arena/votes.sqlite \
		--addr 127.0.0.1:0 >$$log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 600); do grep -q '^serving ' $$log && break; \
		kill -0 $$pid 2>/dev/null || { cat $$log; exit 1; }; sleep 0.1; done; \
	url=$$(sed -n 's/^serving \(http[^ ]*\).*/\1/p' $$log); \
	test -n "$$url" || { echo "arena serve did not start within 60 s:"; cat $$log; exit 1; }; \
	$(CARGO) run --quiet -- arena simulate --url $$url --raters 8 --votes 15 --seed 0 && \
	$(CARGO) run --quiet -- arena export --db runs/demo/arena/votes.sqlite && \
	kill $$pid && wait $$pid && trap - EXIT INT TERM && tail -n 1 $$log
	$(CARGO) run --quiet -- bench leaderboard runs/demo/bench
	$(CARGO) run --quiet -- generate --model diffusion/tests/fixtures/tiny-sd --prompt "a photo of a man wearing a red hat" \
		--steps 10 --seed 0 -o runs/demo/generate.png --overwrite

## What the tests need besides the assets: headless Chromium and chromedriver for the browser
## tests, installed with apt-get when missing (root or sudo).
test-deps:
	tools/setup-test-deps

## Every unit, integration and doc test of the workspace, on a fresh machine too: it fetches the
## assets and installs the browser first.
test: assets test-deps
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc

## The CUDA build must keep compiling (no GPU needed to check it).
check-cuda:
	$(CARGO) check --features cuda

## img2dataset in a virtual environment, for the side-by-side benchmark.
bench-setup:
	tools/img2dataset-bench/setup.sh

## Fetch-and-validate throughput of idforge and img2dataset on the same loopback server.
bench: assets bench-setup
	$(CARGO) bench -p idforge-ingest --bench fetch_throughput

## face-api chain (detect + landmarks + descriptors) per image: idforge's burn CPU backends
## against the reference face-api (tfjs wasm and cpu in Node), same images, same cores.
bench-faces: assets
	CARGO="$(CARGO)" tools/face-bench/run

## The whole curate stage in images/s (1 thread, every core) on the demo photographs, next to
## face-api's chain in Node on the same photographs.
bench-curate: assets
	CARGO="$(CARGO)" tools/curate-bench/run

## The caption stage's parts: face-api's attribute nets in faces/s (1 thread, every core) next to
## face-api in Node (tfjs wasm and cpu, one core) on the demo photographs, the rules splitter in
## captions/s, the openai client and stage in requests/s against the loopback double.
bench-caption: assets
	CARGO="$(CARGO)" tools/caption-bench/run

## rustfmt and clippy (warnings are errors), as CI runs them.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
