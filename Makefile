# Developer shortcuts. Every target finds PostgreSQL the way the tests do:
# INBOX_TEST_DATABASE_URL, else Docker, else local server binaries.

.PHONY: test demo bench fuzz chaos-big ci

## test: every module's tests, with the race detector (what the README gives)
test:
	bash scripts/test.sh

## demo: the end-to-end demo
demo:
	go run ./examples/demo

## bench: the benchmark at full size (several minutes); SIZE=small for a smoke run
bench:
	go run ./cmd/inboxbench -size $(or $(SIZE),full)

## fuzz: each fuzz target for FUZZTIME (default 30s)
fuzz:
	for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' ./*_test.go | sed 's/^func //'); do \
		go test -run '^$$' -fuzz="^$$t\$$" -fuzztime=$(or $(FUZZTIME),30s) . || exit 1; \
	done

## chaos-big: the chaos test at its big size (100,000 events)
chaos-big:
	INBOX_CHAOS=big go test -count=1 -timeout 60m -v ./chaos/

## ci: what CI runs
ci:
	bash .ci/run
