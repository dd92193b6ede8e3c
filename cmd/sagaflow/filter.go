package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

// filterFlags are the saga filters of `sagaflow sagas` and of batch
// actions: the console's and GET /sagas' (api.SagaFilter), as flags.
type filterFlags struct {
	search, state, typ, step, reason, createdBefore string
	age                                             time.Duration
}

func (f *filterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.search, "search", "", "sagas a bare id names: saga id, order id, idempotency key or customer id")
	fs.StringVar(&f.state, "state", "", "sagas in this state (running, compensating, completed, compensated, failed, stuck)")
	fs.StringVar(&f.typ, "type", "", "sagas of this type")
	fs.StringVar(&f.step, "step", "", "sagas on this step (a step name, such as payment)")
	fs.DurationVar(&f.age, "older-than", 0, "sagas created longer ago than this")
	fs.StringVar(&f.createdBefore, "created-before", "", "sagas created before this time (RFC 3339)")
	fs.StringVar(&f.reason, "reason", "", "sagas whose reason contains this text")
}

// values are the flags as the API's query parameters.
func (f *filterFlags) values() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"q": f.search, "state": f.state, "type": f.typ, "step": f.step,
		"reason": f.reason, "created_before": f.createdBefore} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.age > 0 {
		q.Set("age", f.age.String())
	}
	return q
}

// filter resolves the flags into a saga filter; found is false when
// --search matched nothing.
func (f *filterFlags) filter(ctx context.Context, pool *pgxpool.Pool, engine *saga.Engine) (saga.Filter, bool, error) {
	out, found, err := api.SagaFilter(ctx, pool, engine, f.values(), time.Now())
	var fe *api.FilterError
	if errors.As(err, &fe) {
		flagName := map[string]string{"q": "search", "age": "older-than", "created_before": "created-before"}[fe.Param]
		if flagName == "" {
			flagName = fe.Param
		}
		return out, false, errors.New("--" + flagName + " " + fe.Reason)
	}
	return out, found, err
}

// orderEngine is an engine that defines the order saga (with cfg), for the
// commands that act on sagas or name their steps.
func orderEngine(pool *pgxpool.Pool, c commonFlags, cfg order.SagaConfig) (*saga.Engine, error) {
	engine, err := saga.NewEngine(pool, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	cfg.Topics = c.topics()
	if err := engine.Define(order.NewService(pool, engine, cfg.Topics.OrderEvents).NewDefinition(cfg)); err != nil {
		return nil, err
	}
	return engine, nil
}
