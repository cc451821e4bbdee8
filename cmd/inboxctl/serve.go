package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/pginbox/inbox/dashboard"
)

// DefaultAddr is where serve listens by default: this machine only.
const DefaultAddr = "127.0.0.1:8080"

// shutdownTimeout bounds how long serve waits for requests in flight
// when it stops.
const shutdownTimeout = 10 * time.Second

func serveCommand() *command {
	return &command{
		name: "serve", maxArgs: 0,
		summary: "serve the web dashboard (read-only unless --actions)",
		help: `
Serve serves the inbox's web dashboard over HTTP: statistics, rows, events,
dead groups and workers. It is read-only unless --actions is given, which
enables replay, discard, pause and resume from the pages, recorded under
--actor. The dashboard has no authentication of its own: it listens on
localhost by default; put it behind an authenticating proxy before listening
anywhere else. Ctrl-C (SIGINT) or SIGTERM stops it gracefully, letting
requests in flight finish (up to 10s).`,
		examples: []string{
			"inboxctl serve",
			"inboxctl serve --addr 127.0.0.1:9090 --refresh 10s",
			"inboxctl serve --actions --actor oncall@example.com",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			addr := fs.String("addr", DefaultAddr, "`host:port` to listen on")
			actions := fs.Bool("actions", false, "enable actions (replay, discard, pause, resume); read-only otherwise")
			refresh := fs.Duration("refresh", 5*time.Second, "how often pages refresh themselves, in whole seconds; 0 turns refreshing off")
			c.actorFlag(fs)
			c.connFlags(fs)
			return func(ctx context.Context) error {
				switch {
				case *refresh == 0:
					*refresh = -1 // dashboard.Options: negative is never
				case *refresh < time.Second || *refresh%time.Second != 0:
					return usagef("--refresh must be whole seconds, such as 5s, or 0 for never")
				}
				return c.serve(ctx, *addr, *actions, *refresh)
			}
		},
	}
}

func (c *call) serve(ctx context.Context, addr string, actions bool, refresh time.Duration) error {
	admin, err := c.open(ctx)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(c.stderr, nil))
	handler, err := dashboard.New(admin, dashboard.Options{
		Actions: actions,
		Actor:   c.who(),
		Refresh: refresh,
		Logger:  logger,
	})
	if err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mode := "read-only"
	if actions {
		mode = "actions enabled, as " + c.who()
		if !isLoopback(ln.Addr()) {
			fmt.Fprintf(c.stderr, "inboxctl serve: warning: actions are enabled on %s, which is not a loopback address, and the dashboard has no authentication\n", ln.Addr())
		}
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		// Requests outlive the signal, so that Shutdown lets them finish.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(c.stderr, "inboxctl serve: dashboard on http://%s (%s); Ctrl-C stops it\n", ln.Addr(), mode)
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	fmt.Fprintln(c.stderr, "inboxctl serve: stopping")
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(stopCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// isLoopback reports whether a listens on a loopback address only.
func isLoopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
