package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pginbox/inbox/internal/pgserver"
	"github.com/pginbox/inbox/internal/testenv"
)

// keyMetrics are the series names the example must export, whatever the
// dashboard uses.
var keyMetrics = []string{
	"messaging_process_duration_seconds_bucket",
	"messaging_client_operation_duration_seconds_bucket",
	"inbox_process_lag_seconds_bucket",
	"inbox_set_records_total",
	"inbox_set_rows_total",
	"inbox_claim_rows_total",
	"inbox_write_rows_total",
	"inbox_dead_rows_total",
	"inbox_rows",
	"inbox_lag_seconds",
}

// TestExample runs the example against a PostgreSQL database of its own,
// scrapes /metrics until the key metrics and every metric, label and
// label value grafana-dashboard.json refers to are there, then stops it
// as Ctrl-C would and expects a clean stop.
func TestExample(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := pgserver.Find(ctx)
	if err != nil {
		t.Fatalf("the example's test needs PostgreSQL: %v", err)
	}
	defer srv.Close()
	url, drop, err := srv.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer drop(context.Background())

	dash := dashboardRefs(t, "grafana-dashboard.json")
	if len(dash.metrics) < 8 {
		t.Fatalf("found only %d metric names in the dashboard: %v", len(dash.metrics), slices.Sorted(maps.Keys(dash.metrics)))
	}

	t.Logf("the dashboard refers to metrics %v, labels %v, label values %v",
		slices.Sorted(maps.Keys(dash.metrics)), slices.Sorted(maps.Keys(dash.labels)), dash.values)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	listening := make(chan string, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	go func() {
		done <- run(runCtx, config{databaseURL: url, addr: "127.0.0.1:0", every: 20 * time.Millisecond, batch: 3,
			onListen: func(addr string) { listening <- addr }}, log)
	}()
	var addr string
	select {
	case addr = <-listening:
	case err := <-done:
		t.Fatalf("run returned before serving: %v", err)
	}

	var sc scrape
	var missing []string
	_ = testenv.Poll(time.Minute, func() (bool, error) {
		sc = scrapeMetrics(t, "http://"+addr+"/metrics")
		missing = sc.missing(keyMetrics, dash)
		return len(missing) == 0, nil
	})
	if len(missing) > 0 {
		t.Errorf("not in the scrape after a minute:\n  %s", strings.Join(missing, "\n  "))
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of being stopped")
	}
}

// refs are the names a dashboard refers to in its queries.
type refs struct {
	metrics map[string]bool
	labels  map[string]bool
	values  map[string]map[string]bool // label: values matched exactly
}

var (
	matchersRe    = regexp.MustCompile(`\{([^}]*)\}`)
	matcherRe     = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	groupingRe    = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	labelValuesRe = regexp.MustCompile(`label_values\(\s*([^,]*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
	rangeRe       = regexp.MustCompile(`\[[^\]]*\]`)
	identRe       = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?`)
	sampleLabelRe = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// dashboardRefs reads the queries of a Grafana dashboard (panel targets'
// expr, template variables' query and definition) and returns the metric
// names, label names and exactly matched label values they use.
func dashboardRefs(t *testing.T, path string) refs {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var queries []string
	var walk func(key string, v any)
	walk = func(key string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(k, x)
			}
		case []any:
			for _, x := range v {
				walk(key, x)
			}
		case string:
			if key == "expr" || key == "query" || key == "definition" {
				queries = append(queries, v)
			}
		}
	}
	walk("", doc)
	r := refs{metrics: map[string]bool{}, labels: map[string]bool{}, values: map[string]map[string]bool{}}
	for _, q := range queries {
		if q == "prometheus" { // the data source variable's type
			continue
		}
		for _, m := range labelValuesRe.FindAllStringSubmatch(q, -1) {
			r.labels[m[2]] = true
		}
		q = labelValuesRe.ReplaceAllString(q, "$1")
		for _, m := range matchersRe.FindAllStringSubmatch(q, -1) {
			for _, mm := range matcherRe.FindAllStringSubmatch(m[1], -1) {
				r.labels[mm[1]] = true
				if mm[2] == "=" && !strings.Contains(mm[3], "$") {
					if r.values[mm[1]] == nil {
						r.values[mm[1]] = map[string]bool{}
					}
					r.values[mm[1]][mm[3]] = true
				}
			}
		}
		for _, m := range groupingRe.FindAllStringSubmatch(q, -1) {
			for l := range strings.SplitSeq(m[1], ",") {
				r.labels[strings.TrimSpace(l)] = true
			}
		}
		q = groupingRe.ReplaceAllString(matchersRe.ReplaceAllString(rangeRe.ReplaceAllString(q, ""), ""), "")
		for _, m := range identRe.FindAllStringSubmatch(q, -1) {
			if m[2] == "" { // not a function call
				r.metrics[m[1]] = true
			}
		}
	}
	return r
}

// scrape is what /metrics exposed: series names, and the values of each
// label.
type scrape struct {
	names  map[string]bool
	labels map[string]map[string]bool
}

func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %s", url, err, resp.Status)
	}
	s := scrape{names: map[string]bool{}, labels: map[string]map[string]bool{}}
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		s.names[name] = true
		if labels, _, ok := strings.Cut(rest, "}"); ok {
			for _, m := range sampleLabelRe.FindAllStringSubmatch(labels, -1) {
				if s.labels[m[1]] == nil {
					s.labels[m[1]] = map[string]bool{}
				}
				s.labels[m[1]][m[2]] = true
			}
		}
	}
	return s
}

// missing lists what of the key metrics and the dashboard's references
// the scrape lacks.
func (s scrape) missing(key []string, dash refs) []string {
	var out []string
	for _, n := range key {
		if !s.names[n] {
			out = append(out, "key metric "+n)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(dash.metrics)) {
		if !s.names[n] {
			out = append(out, "dashboard metric "+n)
		}
	}
	for _, l := range slices.Sorted(maps.Keys(dash.labels)) {
		if s.labels[l] == nil {
			out = append(out, "dashboard label "+l)
		}
	}
	for l, vs := range dash.values {
		for v := range vs {
			if !s.labels[l][v] {
				out = append(out, fmt.Sprintf("dashboard label value %s=%q", l, v))
			}
		}
	}
	return out
}
