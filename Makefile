# Sagaflow's developer commands. The README's two commands are `make dev`
# and `make test`.

GO        ?= go
KAFKA     := scripts/kafka/kafka
KAFKA_DIR ?= .kafka-work
TEST_TIMEOUT ?= 75m
CHAOS_REPORT ?= $(CURDIR)/.chaos/report.txt
FUZZTIME  ?= 50000x
TEST_OUT  ?= $(CURDIR)/.test-output

.PHONY: build dev test test-short fuzz lint kafka-start kafka-stop clean

build:
	$(GO) build -o bin/sagaflow ./cmd/sagaflow

# Everything in one process: private PostgreSQL under ./.sagaflow, embedded
# Kafka, all services, the API on 127.0.0.1:8080. Ctrl-C stops it.
dev: build
	bin/sagaflow dev

# The whole suite: a real Apache Kafka broker (fetched by Maven, run with the
# machine's Java) and `go test -race ./...` against it. The failure scenarios
# (package chaos) run after the other packages, alone: on 2 cores, packages
# that start brokers of their own beside them starved the scenarios' roles
# into step timeouts. The broker is stopped whatever the tests' outcome, and
# the tests' status is the exit status. The console's browser tests drive
# Debian's Chromium (scripts/chromium installs it) and save their screenshots
# in TEST_OUT/screenshots. The alert rules' tests run Prometheus's promtool
# (scripts/promtool builds it once), the end-to-end tracing test a real
# Jaeger (scripts/jaeger/jaeger builds it once and starts it), the
# schema registry's tests Apicurio Registry (scripts/registry/registry). Before the broker starts, every fuzz
# target runs FUZZTIME executions (target fuzz); a failure stops make test there.
test:
	$(GO) vet ./...
	$(GO) run ./cmd/sagaflow schemas check
	$(MAKE) --no-print-directory fuzz
	@set -e; \
	chromium=$$(scripts/chromium | tail -n 1); \
	promtool=$$(scripts/promtool | tail -n 1); \
	jaeger=$$(scripts/jaeger/jaeger start) || { echo "$$jaeger"; exit 1; }; \
	jaeger_query=$$(echo "$$jaeger" | sed -n 's/^JAEGER_QUERY=//p'); \
	jaeger_otlp=$$(echo "$$jaeger" | sed -n 's/^OTEL_EXPORTER_OTLP_ENDPOINT=//p'); \
	reg=$$(scripts/registry/registry start) || { echo "$$reg"; scripts/jaeger/jaeger stop; exit 1; }; \
	registry=$$(echo "$$reg" | sed -n 's/^SCHEMA_REGISTRY=//p'); \
	out=$$($(KAFKA) start --fresh --dir $(KAFKA_DIR)) || { echo "$$out"; scripts/jaeger/jaeger stop; scripts/registry/registry stop; exit 1; }; \
	brokers=$$(echo "$$out" | tail -n 1 | sed 's/^KAFKA_BROKERS=//'); \
	echo "real Kafka broker at $$brokers"; \
	status=0; \
	rm -f $(CHAOS_REPORT); \
	rm -rf $(TEST_OUT); mkdir -p $(TEST_OUT)/screenshots; \
	export KAFKA_BROKERS=$$brokers SAGAFLOW_KAFKA_SCRIPT=$(CURDIR)/$(KAFKA) SAGAFLOW_CHAOS_REPORT=$(CHAOS_REPORT) \
		SAGAFLOW_CHROMIUM=$$chromium SAGAFLOW_REQUIRE_BROWSER=1 SAGAFLOW_SCREENSHOTS=$(TEST_OUT)/screenshots \
		SAGAFLOW_PROMTOOL=$$promtool SAGAFLOW_REQUIRE_PROMTOOL=1 \
		SAGAFLOW_JAEGER_QUERY=$$jaeger_query SAGAFLOW_JAEGER_OTLP=$$jaeger_otlp SAGAFLOW_REQUIRE_JAEGER=1 \
		SAGAFLOW_SCHEMA_REGISTRY=$$registry SAGAFLOW_REQUIRE_REGISTRY=1; \
	{ $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v '/chaos$$') 2>&1; \
	  echo $$? > $(TEST_OUT)/packages.status; } | tee $(TEST_OUT)/packages.log; \
	{ $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./chaos 2>&1; \
	  echo $$? > $(TEST_OUT)/chaos.status; } | tee $(TEST_OUT)/chaos.log; \
	for s in $(TEST_OUT)/*.status; do [ "$$(cat $$s)" = 0 ] || status=$$(cat $$s); done; \
	$(KAFKA) stop --dir $(KAFKA_DIR) || true; \
	scripts/jaeger/jaeger stop || true; \
	scripts/registry/registry stop || true; \
	if [ -f $(CHAOS_REPORT) ]; then echo "failure scenarios against the real broker:"; cat $(CHAOS_REPORT); fi; \
	if [ $$status != 0 ]; then echo "what failed (full output in $(TEST_OUT)/):"; scripts/test-failures $(TEST_OUT)/*.log; fi; \
	exit $$status

# Each fuzz target for FUZZTIME, one target per run: -fuzz takes exactly
# one. The budget is a count of executions (50000x, 4-9 s a target here),
# not a duration: with a duration, Go 1.26's fuzz coordinator can report a
# spurious "context deadline exceeded" failure when the time is up while a
# starved worker is mid-execution (golang/go#75804, fixed in Go 1.27); a CI
# run failed on it with no failing input written. The decoders of untrusted input: the POST /orders body,
# saga commands and replies, the participants' commands. An input that fails
# is written under the package's testdata/fuzz/<FuzzName>/; `go test` runs
# those files (and the targets' seeds) as ordinary tests.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePlaceRequest$$' -fuzztime $(FUZZTIME) ./api
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCommand$$' -fuzztime $(FUZZTIME) ./saga
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeReply$$' -fuzztime $(FUZZTIME) ./saga
	$(GO) test -run '^$$' -fuzz '^FuzzParticipantDecode$$' -fuzztime $(FUZZTIME) ./steps

# The fast suite alone: embedded kfake and a throwaway PostgreSQL.
test-short:
	$(GO) test ./...

lint:
	$(GO) vet ./...
	test -z "$$(gofmt -l .)"
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

clean:
	rm -rf bin .sagaflow $(KAFKA_DIR)
