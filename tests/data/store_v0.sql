BEGIN TRANSACTION;
CREATE TABLE curves (
    run_id TEXT, step INTEGER, epoch INTEGER, name TEXT, value REAL, t REAL);
INSERT INTO "curves" VALUES('f0tune00001',0,0,'batch_loss',0.75,1700000003.5);
INSERT INTO "curves" VALUES('f0tune00001',1,0,'batch_loss',0.5,1700000003.5);
INSERT INTO "curves" VALUES('f0tune00001',1,0,'val_loss',0.625,1700000003.5);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, kind TEXT, created REAL, started REAL, finished REAL, status TEXT, params TEXT,
    done INTEGER, total INTEGER, message TEXT, pid INTEGER, error TEXT, cancel INTEGER DEFAULT 0, result TEXT,
    heartbeat REAL);
INSERT INTO "jobs" VALUES('j0job000001','grid',1700000000.0,NULL,NULL,'done','{"dataset": "demo", "backbones": ["efficientnet_lite0"]}',3,3,'3 runs done',NULL,NULL,0,'{"runs": ["r0grid00001"]}',NULL);
CREATE TABLE predictions (
    run_id TEXT, left_path TEXT, right_path TEXT, left_group TEXT, right_group TEXT, label INTEGER, prob REAL);
INSERT INTO "predictions" VALUES('r0grid00001','a.jpg','b.jpg','1','1',1,0.875);
INSERT INTO "predictions" VALUES('r0grid00001','b.jpg','c.jpg','1','2',0,0.25);
INSERT INTO "predictions" VALUES('r0grid00001','c.jpg','a.jpg','2','1',0,0.0625);
INSERT INTO "predictions" VALUES('f0tune00001','a.jpg','b.jpg','1','1',1,0.875);
INSERT INTO "predictions" VALUES('f0tune00001','b.jpg','c.jpg','1','2',0,0.25);
CREATE TABLE runs (
    id TEXT PRIMARY KEY, created REAL, finished REAL, status TEXT, kind TEXT,
    dataset TEXT, fingerprint TEXT, backbone TEXT, merge TEXT, classifier TEXT, split TEXT, seed INTEGER,
    config TEXT, metrics TEXT, timings TEXT, versions TEXT, git TEXT, error TEXT, job_id TEXT, artifacts TEXT);
INSERT INTO "runs" VALUES('r0grid00001',1700000001.0,1700000002.0,'done','pair','demo','fp123','efficientnet_lite0','dot','xgboost','group',4,'{"dataset": "demo", "backbones": ["efficientnet_lite0"], "merges": ["dot"], "classifiers": ["xgboost"], "split": "group", "test_size": 0.3, "negative_ratio": 1.0, "negatives": "hard", "seed": 4, "weights": "imagenet", "fusion": false, "library_defaults": false, "ray": null}','{"accuracy": 0.9375, "accuracy_lo": 0.875, "accuracy_hi": 1.0, "auc": 0.96875, "f1": 0.9, "map": 0.53125, "n_test": 3, "n_train": 12}','{"total": 1.5}','{"numpy": "2.0"}','abc1234',NULL,'j0job000001',NULL);
INSERT INTO "runs" VALUES('f0tune00001',1700000003.0,1700000004.0,'done','finetune','demo','fp123','efficientnet_lite0','siamese','contrastive','group',7,'{"dataset": "demo", "mode": "siamese", "backbone": "efficientnet_lite0", "weights": "imagenet", "merge": "dot", "tower": "backbone", "init": "whitening", "loss": "contrastive", "margin": 1.0, "embedding_dim": 128, "epochs": 2, "batch_size": 32, "learning_rate": null, "unfreeze": 0, "backbone_lr_factor": 0.1, "augment": false, "same_transform": true, "steps_per_epoch": null, "patience": 3, "val_fraction": 0.15, "cnn_size": 96, "split": "group", "test_size": 0.25, "negative_ratio": 2.0, "negatives": "same_left", "seed": 7}','{"accuracy": 0.8125, "auc": 0.875, "map": 0.734375, "map_frozen": 0.71875, "map_scope": "test images", "best_epoch": 1, "epochs_run": 2}','{"total": 12.25}','{}','abc1234',NULL,'j0job000002','{"folder": "cache/runs/f0tune00001"}');
CREATE INDEX predictions_run ON predictions(run_id);
CREATE INDEX curves_run ON curves(run_id);
COMMIT;
