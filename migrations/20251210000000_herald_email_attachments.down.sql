DROP TABLE email_attachment_blobs;
